"""Tests of ldm.data: the embedded shapes dataset, users' own data, the original configs' datasets read
from tiny fake folders, and the data module."""
from __future__ import annotations

import csv
import json
import os
import tarfile
import types

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.data.base import ImageReadError, Txt2ImgIterableBaseDataset, to_float, to_uint8
from ldm.data.custom import (ImageCaptionDataset, ImageFolderDataset, InpaintingDataset, SuperResolutionDataset,
                             random_inpainting_mask)
from ldm.data.synthetic import CLASSES, COLOURS, SyntheticShapesTrain, SyntheticShapesValidation


def _write_image(path, size=(40, 30), colour=(200, 50, 50), fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    arr = np.clip(np.array(colour)[None, None, :] + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(arr.astype(np.uint8)).save(path, format=fmt)
    return str(path)


def _check_image(x, side):
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    assert x.shape == (side, side, 3)
    assert x.min() >= -1.0 and x.max() <= 1.0


# --- the embedded shapes dataset -----------------------------------------------------------------------------


def test_synthetic_shapes_format_and_classes():
    ds = SyntheticShapesTrain(size=32, num_samples=24)
    assert len(ds) == 24 and ds.classes == list(CLASSES)
    for i in range(12):
        ex = ds[i]
        _check_image(ex["image"], 32)
        assert ex["class_label"] == i % len(CLASSES)
        assert ex["human_label"] == CLASSES[ex["class_label"]]
        colour, shape = ex["human_label"].split()
        assert colour in ex["caption"] and shape in ex["caption"]
        assert ex["image"].std() > 0.05  # a shape on a background, not a flat image
    assert len({ds[i]["caption"] for i in range(24)}) > 6  # template variety


def test_synthetic_shapes_deterministic_and_split_dependent():
    a, b = SyntheticShapesTrain(num_samples=8), SyntheticShapesTrain(num_samples=8)
    val = SyntheticShapesValidation(num_samples=8)
    other_seed = SyntheticShapesTrain(num_samples=8, seed=1)
    for i in range(4):
        np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
        assert a[i]["caption"] == b[i]["caption"]
        assert not np.array_equal(a[i]["image"], val[i]["image"])
        assert not np.array_equal(a[i]["image"], other_seed[i]["image"])
    cached = SyntheticShapesTrain(num_samples=8, cache=True)
    np.testing.assert_array_equal(cached[3]["image"], cached[3]["image"])
    np.testing.assert_array_equal(cached[3]["image"], a[3]["image"])


def test_synthetic_shapes_colour_is_where_the_class_says():
    ds = SyntheticShapesTrain(size=32, num_samples=60, num_classes=3)
    assert ds.classes == list(CLASSES[:3])
    for i in range(30):
        ex = ds[i]
        img = to_uint8(ex["image"]).astype(np.int32)
        target = np.array(COLOURS[ex["human_label"].split()[0]])
        close = np.abs(img - target).max(axis=-1) < 45
        assert close.mean() > 0.03, ex["caption"]  # the shape's colour covers a visible area


def test_synthetic_shapes_sizes_render_and_errors():
    ds = SyntheticShapesTrain(size=64, num_samples=4, classes=["blue circle", "red star"])
    _check_image(ds[1]["image"], 64)
    assert ds[1]["human_label"] == "red star" and ds.num_classes == 2
    pic = ds.render("red star", seed=3)
    assert pic.shape == (64, 64, 3) and pic.dtype == np.uint8
    np.testing.assert_array_equal(pic, ds.render(1, seed=3))
    assert ds.class_caption(0) == "a blue circle"
    with pytest.raises(ValueError, match="green triangle"):
        ds.render("green triangle")
    with pytest.raises(ValueError, match="split"):
        SyntheticShapesTrain.__mro__[1](split="test")
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapesTrain(num_classes=99)
    with pytest.raises(ValueError, match="'pink hexagon'"):
        SyntheticShapesTrain(classes=["pink hexagon"])
    with pytest.raises(IndexError):
        ds[4]


def test_synthetic_shapes_are_fast():
    import time

    ds = SyntheticShapesTrain(size=32, num_samples=200)
    start = time.perf_counter()
    for i in range(200):
        ds[i]
    assert (time.perf_counter() - start) / 200 < 0.01  # about 0.1-0.4 ms each on one core


# --- users' own data -----------------------------------------------------------------------------------------


def test_image_folder_with_class_subfolders(tmp_path):
    for cls, colour in (("cats", (200, 50, 50)), ("dogs", (50, 50, 200))):
        for k in range(2):
            _write_image(tmp_path / "imgs" / cls / f"{k}.png", colour=colour)
    ds = ImageFolderDataset(str(tmp_path / "imgs"), size=16)
    assert len(ds) == 4 and ds.classes == ["cats", "dogs"]
    ex = ds[3]
    _check_image(ex["image"], 16)
    assert ex["class_label"] == 1 and ex["human_label"] == "dogs"
    assert ex["relative_file_path_"] == os.path.join("dogs", "1.png")
    assert ex["image"][..., 2].mean() > ex["image"][..., 0].mean()  # blue image

    flat = ImageFolderDataset([ex["file_path_"]], size=None)
    assert "class_label" not in flat[0] and flat[0]["image"].shape == (30, 40, 3)

    listing = tmp_path / "imgs" / "list.txt"
    listing.write_text("cats/0.png\ndogs/0.png\n")
    listed = ImageFolderDataset(str(listing), size=8, random_crop=True, flip_p=1.0)
    assert len(listed) == 2 and "class_label" not in listed[1]
    _check_image(listed[1]["image"], 8)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolderDataset(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataset(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="interpolation"):
        ImageFolderDataset(str(tmp_path / "empty"), interpolation="cubic-ish")


def test_corrupt_image_error_names_the_path(tmp_path):
    good = _write_image(tmp_path / "imgs" / "good.jpg")
    bad = tmp_path / "imgs" / "bad.jpg"
    bad.write_bytes(open(good, "rb").read()[:200])  # a truncated JPEG
    ds = ImageFolderDataset(str(tmp_path / "imgs"), size=8)
    names = [os.path.basename(p) for p in ds.labels["file_path_"]]
    with pytest.raises(ImageReadError, match="bad.jpg"):
        ds[names.index("bad.jpg")]
    _check_image(ds[names.index("good.jpg")]["image"], 8)


def test_caption_jsonl_and_csv(tmp_path):
    _write_image(tmp_path / "a" / "x.png")
    _write_image(tmp_path / "a" / "y.png", colour=(10, 200, 10))
    jsonl = tmp_path / "a" / "captions.jsonl"
    jsonl.write_text(json.dumps({"file_name": "x.png", "caption": "a red thing", "class_label": 3}) + "\n"
                     + json.dumps({"file_name": "y.png", "caption": "a green thing", "class_label": 1}) + "\n")
    ds = ImageCaptionDataset(str(jsonl), size=16)
    assert len(ds) == 2
    assert ds[1]["caption"] == "a green thing" and ds[1]["class_label"] == 1
    _check_image(ds[0]["image"], 16)

    table = tmp_path / "captions.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "text"])
        writer.writerow(["a/x.png", "first"])
        writer.writerow(["a/y.png", "second"])
    ds = ImageCaptionDataset(str(table), size=8)
    assert [ds[i]["caption"] for i in range(2)] == ["first", "second"]
    assert "class_label" not in ds[0]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"file_name": "a/x.png"}) + "\n")
    with pytest.raises(ValueError, match="caption column"):
        ImageCaptionDataset(str(bad))
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"file_name": "nope.png", "caption": "c"}) + "\n")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        ImageCaptionDataset(str(missing))
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        ImageCaptionDataset(str(tmp_path / "absent.jsonl"))


def test_inpainting_masks(tmp_path):
    rng = np.random.default_rng(0)
    for mode in ("mixed", "rectangles", "strokes"):
        mask = random_inpainting_mask(32, 24, rng, mode=mode)
        assert mask.shape == (32, 24, 1) and mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0} and 0 < mask.mean() <= 0.7

    config = {"target": "ldm.data.synthetic.SyntheticShapesValidation", "params": {"size": 32, "num_samples": 6}}
    ds = InpaintingDataset(dataset=config, deterministic_masks=True)
    ex = ds[2]
    assert ex["mask"].shape == (32, 32, 1) and ex["masked_image"].shape == (32, 32, 3)
    np.testing.assert_allclose(ex["masked_image"], ex["image"] * (1 - ex["mask"]))
    assert np.all(ex["masked_image"][ex["mask"][..., 0] == 1] == 0)
    assert "caption" in ex and "class_label" in ex
    np.testing.assert_array_equal(ex["mask"], ds[2]["mask"])

    _write_image(tmp_path / "i" / "a.png", size=(20, 20))
    folder = InpaintingDataset(root=str(tmp_path / "i"), size=16, mask_mode="strokes")
    assert folder[0]["mask"].shape == (16, 16, 1)
    with pytest.raises(ValueError, match="exactly one"):
        InpaintingDataset()
    with pytest.raises(ValueError, match="mask_mode"):
        InpaintingDataset(dataset=config, mask_mode="circles")


def test_super_resolution_dataset(tmp_path):
    _write_image(tmp_path / "hr" / "a.png", size=(50, 40))
    for degradation in ("pil_bicubic", "cv_area", "pil_nearest"):
        ds = SuperResolutionDataset(str(tmp_path / "hr"), size=16, downscale_f=4, degradation=degradation,
                                    min_crop_f=0.5, max_crop_f=1.0)
        ex = ds[0]
        _check_image(ex["image"], 16)
        _check_image(ex["LR_image"], 4)
    with pytest.raises(ValueError, match="degradation must be one of"):
        SuperResolutionDataset(str(tmp_path / "hr"), size=16, degradation="magic")
    with pytest.raises(ValueError, match="downscale_f"):
        SuperResolutionDataset(str(tmp_path / "hr"), size=16, downscale_f=3)


@pytest.mark.parametrize("degradation", ["bsrgan", "bsrgan_light"])
def test_super_resolution_bsrgan(tmp_path, degradation):
    pytest.importorskip(f"ldm.modules.image_degradation.{degradation}")
    _write_image(tmp_path / "hr" / "a.png", size=(72, 64))
    ds = SuperResolutionDataset(str(tmp_path / "hr"), size=32, downscale_f=4, degradation=degradation)
    torch.manual_seed(0)
    ex = ds[0]
    _check_image(ex["image"], 32)
    _check_image(ex["LR_image"], 8)


# --- the original configs' datasets on tiny fake folders -----------------------------------------------------


def _fake_imagenet_folder(root, synsets=("n01440764", "n01443537"), per_class=2):
    for s in synsets:
        for k in range(per_class):
            _write_image(os.path.join(root, "data", s, f"{s}_{k}.JPEG"), size=(24, 20), fmt="JPEG")


def test_imagenet_from_folder(tmp_path):
    from ldm.data.imagenet import ImageNetTrain, ImageNetValidation, str_to_indices

    _fake_imagenet_folder(tmp_path / "ILSVRC2012_train")
    ds = ImageNetTrain(data_root=str(tmp_path), config={"size": 16})
    assert len(ds) == 4 and ds.random_crop
    ex = ds[2]
    _check_image(ex["image"], 16)
    assert ex["class_label"] == 1 and ex["synset"] == "n01443537" == ex["synsets"]
    assert ex["human_label"] == "goldfish, Carassius auratus"
    assert ds[0]["human_label"] == "tench, Tinca tinca"
    assert (tmp_path / "ILSVRC2012_train" / ".ready").exists()
    assert (tmp_path / "ILSVRC2012_train" / "filelist.txt").read_text().splitlines()[0] == "n01440764/n01440764_0.JPEG"

    orig = ImageNetTrain(data_root=str(tmp_path), config={"size": 8, "keep_orig_class_label": True,
                                                          "sub_indices": "1", "ImageNetTrain": {"random_crop": False}})
    assert len(orig) == 2 and orig[0]["class_label"] == 1 and not orig.random_crop
    assert str_to_indices("0-3,7") == [0, 1, 2, 7]

    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_val.tar"):
        ImageNetValidation(data_root=str(tmp_path / "elsewhere"))


def test_imagenet_validation_from_tar(tmp_path):
    from ldm.data.imagenet import ImageNetSRValidation, ImageNetValidation

    split = tmp_path / "ILSVRC2012_validation"
    staging = tmp_path / "staging"
    names = {"ILSVRC2012_val_00000001.JPEG": "n01443537", "ILSVRC2012_val_00000002.JPEG": "n01440764"}
    for name in names:
        _write_image(staging / name, size=(30, 30), fmt="JPEG")
    split.mkdir()
    with tarfile.open(split / "ILSVRC2012_img_val.tar", "w") as tar:
        for name in names:
            tar.add(staging / name, arcname=name)
    (split / "validation_synset.txt").write_text("".join(f"{n} {s}\n" for n, s in names.items()))

    ds = ImageNetValidation(data_root=str(tmp_path), config={"size": 12})
    assert len(ds) == 2 and not ds.random_crop
    assert ds[0]["synset"] == "n01440764" and ds[0]["class_label"] == 0
    _check_image(ds[1]["image"], 12)

    sr = ImageNetSRValidation(size=16, degradation="pil_nearest", downscale_f=2, data_root=str(tmp_path))
    ex = sr[1]
    _check_image(ex["image"], 16)
    _check_image(ex["LR_image"], 8)
    assert ex["class_label"] == 1
    with pytest.raises(ValueError, match="degradation"):
        ImageNetSRValidation(size=16, data_root=str(tmp_path))


def test_lsun_file_list(tmp_path):
    from ldm.data.lsun import LSUNBase, LSUNChurchesTrain, LSUNChurchesValidation

    _write_image(tmp_path / "churches" / "a" / "1.webp", size=(40, 30), fmt="WEBP")
    _write_image(tmp_path / "churches" / "b.png", size=(30, 40))
    listing = tmp_path / "church_outdoor_train.txt"
    listing.write_text("a/1.webp\nb.png\n")
    ds = LSUNChurchesTrain(txt_file=str(listing), data_root=str(tmp_path / "churches"), size=16)
    assert len(ds) == 2 and ds.flip_p == 0.5
    ex = ds[0]
    _check_image(ex["image"], 16)
    assert ex["relative_file_path_"] == "a/1.webp" and ex["file_path_"].endswith(os.path.join("churches", "a/1.webp"))
    assert LSUNChurchesValidation(txt_file=str(listing), data_root=str(tmp_path / "churches")).flip_p == 0.0
    assert LSUNBase(str(listing), str(tmp_path / "churches"))[1]["image"].shape == (30, 30, 3)

    with pytest.raises(FileNotFoundError, match="church_outdoor_train.txt.*one image path per line"):
        LSUNChurchesTrain(size=16)
    with pytest.raises(FileNotFoundError, match="nope"):
        LSUNBase(str(listing), str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="interpolation"):
        LSUNBase(str(listing), str(tmp_path / "churches"), interpolation="cubic")
    with pytest.raises(ValueError, match="LSUNBase needs txt_file and data_root"):
        LSUNBase(data_root=str(tmp_path / "churches"))


def test_faces_file_lists(tmp_path):
    from ldm.data.faceshq import CelebAHQTrain, FacesBase, FFHQValidation
    from ldm.util import get_obj_from_str

    assert get_obj_from_str("taming.data.faceshq.FFHQTrain").__module__ == "ldm.data.faceshq"
    _write_image(tmp_path / "ffhq" / "00000.png", size=(20, 20))
    (tmp_path / "ffhqvalidation.txt").write_text("00000.png\n")
    ds = FFHQValidation(size=8, txt_file=str(tmp_path / "ffhqvalidation.txt"), root=str(tmp_path / "ffhq"))
    _check_image(ds[0]["image"], 8)

    os.makedirs(tmp_path / "celebahq")
    np.save(tmp_path / "celebahq" / "imgHQ00000.npy", np.full((1, 3, 12, 12), 255, dtype=np.uint8))
    (tmp_path / "celebahqtrain.txt").write_text("imgHQ00000.npy\n")
    celeba = CelebAHQTrain(size=8, keys=["image"], txt_file=str(tmp_path / "celebahqtrain.txt"),
                           root=str(tmp_path / "celebahq"))
    ex = celeba[0]
    assert list(ex) == ["image"] and ex["image"].shape == (8, 8, 3) and np.allclose(ex["image"], 1.0)
    with pytest.raises(FileNotFoundError, match="ffhqtrain.txt"):
        get_obj_from_str("taming.data.faceshq.FFHQTrain")(size=256)
    with pytest.raises(ValueError, match="FacesBase needs txt_file and root"):
        FacesBase(size=8, root=str(tmp_path / "ffhq"))


def test_openimages_and_landscapes(tmp_path):
    from ldm.data.landscapes import RFWTrain
    from ldm.data.openimages import FullOpenImagesTrain, OpenImagesBBoxValidation, SuperresOpenImagesAdvancedTrain

    root = tmp_path / "oi"
    _write_image(root / "train" / "abc.jpg", size=(40, 30), fmt="JPEG")
    _write_image(root / "validation" / "img1.jpg", size=(40, 30), fmt="JPEG")
    full = FullOpenImagesTrain(size=24, crop_size=16, data_root=str(root))
    _check_image(full[0]["image"], 16)
    sr = SuperresOpenImagesAdvancedTrain(size=16, degradation="pil_bicubic", data_root=str(root))
    _check_image(sr[0]["LR_image"], 4)
    with pytest.raises(FileNotFoundError, match="validation"):
        FullOpenImagesTrain.__mro__[1]("validation", data_root=str(tmp_path / "none"))

    (root / "annotations").mkdir()
    (root / "annotations" / "class-descriptions-boxable.csv").write_text("/m/a,Apple\n/m/b,Boat\n")
    (root / "annotations" / "validation-annotations-bbox.csv").write_text(
        "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf\n"
        "img1,x,/m/a,1,0.1,0.5,0.2,0.6,0,0,0\n"
        "img1,x,/m/b,1,0.5,0.9,0.5,0.9,0,0,1\n")
    bbox = OpenImagesBBoxValidation(size=16, data_root=str(root))
    ex = bbox[0]
    _check_image(ex["image"], 16)
    tokens = ex["coordinates_bbox"]
    assert tokens.shape == (92,) and tokens.dtype == np.int64 and tokens.max() < 8192 and tokens.min() >= 0
    assert sorted(tokens[[0, 3]].tolist()) == [0, 3]  # Apple (0) and Boat as a group (1 + 2 categories)
    assert np.all(tokens[6:90] == 8191)

    rfw = tmp_path / "rfw" / "train"
    _write_image(rfw / "images" / "p.jpg", size=(24, 20), fmt="JPEG")
    os.makedirs(rfw / "segmentations")
    Image.fromarray(np.arange(480).reshape(20, 24).astype(np.uint8) % 182).save(rfw / "segmentations" / "p.png")
    land = RFWTrain(size=20, crop_size=16, segmentation_to_float32=True, data_root=str(tmp_path / "rfw"))[0]
    _check_image(land["image"], 16)
    assert land["segmentation"].shape == (16, 16, 182) and land["segmentation"].dtype == np.float32
    np.testing.assert_array_equal(land["segmentation"].sum(-1), 1.0)


# --- the data module -----------------------------------------------------------------------------------------


def _synthetic(split, n):
    return {"target": f"ldm.data.synthetic.SyntheticShapes{split}", "params": {"size": 16, "num_samples": n}}


def test_datamodule_builds_loaders_from_config():
    from omegaconf import OmegaConf
    from pytorch_lightning.utilities.model_helpers import is_overridden

    from ldm.data.datamodule import DataModuleFromConfig, WrappedDataset
    from ldm.util import instantiate_from_config

    config = OmegaConf.create({"target": "ldm.data.datamodule.DataModuleFromConfig", "params": {
        "batch_size": 4, "num_workers": 0, "wrap": True,
        "train": _synthetic("Train", 10), "validation": _synthetic("Validation", 6)}})
    dm = instantiate_from_config(config)
    dm.prepare_data()
    dm.setup("fit")
    assert isinstance(dm.datasets["train"], WrappedDataset) and len(dm.datasets["validation"]) == 6
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == torch.float32
    assert batch["class_label"].dtype == torch.int64 and len(batch["caption"]) == 4
    val = list(dm.val_dataloader())
    assert [len(b["caption"]) for b in val] == [4, 2]
    assert is_overridden("val_dataloader", dm) and not is_overridden("test_dataloader", dm)

    capped = DataModuleFromConfig(batch_size=512, train=_synthetic("Train", 4))
    assert 1 <= capped.num_workers <= (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="batch_size"):
        DataModuleFromConfig(batch_size=0)


def test_datamodule_missing_path_fails_at_setup(tmp_path):
    from ldm.data.datamodule import DataModuleFromConfig

    dm = DataModuleFromConfig(batch_size=2, num_workers=0, train={
        "target": "ldm.data.lsun.LSUNChurchesTrain",
        "params": {"size": 16, "txt_file": str(tmp_path / "missing_list.txt")}})
    with pytest.raises(FileNotFoundError, match="missing_list.txt"):
        dm.setup("fit")


class _Records(Txt2ImgIterableBaseDataset):
    def __iter__(self):
        yield from ({"id": i} for i in self.sample_ids)


def test_worker_init_fn_splits_iterable_datasets(monkeypatch):
    from ldm.data import datamodule

    ds = _Records(num_records=10, valid_ids=list(range(10)), size=8)
    assert len(ds) == 10
    info = types.SimpleNamespace(dataset=ds, id=1, num_workers=2, seed=1234)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
    datamodule.worker_init_fn(1)
    assert [x["id"] for x in ds] == [5, 6, 7, 8, 9]
    assert np.random.get_state()[1][0] == np.random.RandomState(1234).get_state()[1][0]


def test_float_conversion_round_trip():
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    as_float = to_float(arr)
    assert as_float.dtype == np.float32 and as_float.min() == -1.0 and as_float.max() == 1.0
    np.testing.assert_array_equal(to_uint8(as_float), arr)


def test_super_resolution_of_the_embedded_dataset():
    config = {"target": "ldm.data.synthetic.SyntheticShapesTrain", "params": {"size": 32, "num_samples": 4}}
    ds = SuperResolutionDataset(dataset=config, size=32, downscale_f=4, degradation="pil_bicubic")
    ex = ds[1]
    _check_image(ex["image"], 32)
    _check_image(ex["LR_image"], 8)
    assert ex["class_label"] == 1 and "caption" in ex
    with pytest.raises(ValueError, match="exactly one"):
        SuperResolutionDataset(size=32)
