"""Open Images (Kuznetsova et al. 2020) datasets named by the latent diffusion configs (Rombach et al., CVPR 2022).

The original repository never shipped this module; these classes read a local copy with the layout of
the official download (nothing is downloaded):

    data/openimages/train/<ImageID>.jpg, data/openimages/validation/<ImageID>.jpg
    data/openimages/annotations/oidv6-train-annotations-bbox.csv      (bounding boxes, layout2img only)
    data/openimages/annotations/validation-annotations-bbox.csv
    data/openimages/annotations/class-descriptions-boxable.csv        (LabelName,DisplayName)

- ``FullOpenImagesTrain/Validation`` (first-stage training): ``image``, rescaled so that the smaller
  side is ``size`` (when given) and cropped to ``crop_size`` (random for training, centred otherwise).
- ``SuperresOpenImagesAdvancedTrain/Validation`` (LDM-SR): ``image`` and ``LR_image`` as ``ImageNetSR``.
- ``OpenImagesBBoxTrain/Validation`` (layout-to-image): ``image`` and ``coordinates_bbox``, the token
  sequence of taming-transformers' bounding-box conditional builder: per object (category, top-left
  token, bottom-right token) on a sqrt(no_tokens)-sided grid, padded with ``no_tokens - 1`` to
  ``max_objects_per_image`` objects, followed by the two tokens of the crop. Categories are numbered
  in the order of ``class-descriptions-boxable.csv``; "group of" boxes add ``no_object_classes``.
  The original's internal category subset and numbering were never released, so token ids of the
  layout2img checkpoint may name other categories.
"""
from __future__ import annotations

import csv
import math
import os
import random
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ldm.data.base import (check_size, crop, list_images, load_image_array, random_int, resize,
                           resize_smallest_side, resolve_path, split_folder, to_float)
from ldm.data.superres import SuperResolutionPipeline

DATA_ROOT = "data/openimages"
SPLITS = ("train", "validation")
ANNOTATION_FILES = {"train": "oidv6-train-annotations-bbox.csv", "validation": "validation-annotations-bbox.csv"}
CLASS_FILE = "class-descriptions-boxable.csv"


def _split_images(data_root: str, split: str) -> tuple[str, list[str]]:
    """(folder, sorted relative image paths) of a split; raises naming the folder when it is missing or empty."""
    folder = split_folder(data_root, split, SPLITS, "Open Images", f"the {split} images (<ImageID>.jpg) of a local "
                          f"Open Images copy (set data_root to its location)")
    images = list_images(folder)
    if not images:
        raise FileNotFoundError(f"Open Images folder {folder!r} holds no images")
    return folder, images


class FullOpenImagesBase(Dataset):
    """Every image of a split folder: rescaled to ``size`` (smaller side) and cropped to ``crop_size``."""

    def __init__(
        self,
        split: str,                                  # "train" or "validation"
        size: int | None = None,                     # smaller side after rescaling (None: keep)
        crop_size: int | None = None,                # side of the square crop (None: no crop)
        random_crop: bool | None = None,             # random crop position (None: for training only)
        data_root: str = DATA_ROOT,                  # folder holding train/ and validation/
        interpolation: str = "bicubic",              # filter used to rescale
    ):
        check_size(size)
        check_size(crop_size, "crop_size")
        self.folder, self.relpaths = _split_images(data_root, split)
        self.size = size
        self.crop_size = crop_size
        self.random_crop = split == "train" if random_crop is None else random_crop
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.relpaths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = os.path.join(self.folder, self.relpaths[i])
        image = load_image_array(path)
        if self.size is not None:
            image = resize_smallest_side(image, self.size, self.interpolation)
        if self.crop_size is not None:
            if min(image.shape[:2]) < self.crop_size:
                image = resize_smallest_side(image, self.crop_size, self.interpolation)
            image = crop(image, self.crop_size, self.crop_size, self.random_crop)
        return {"image": to_float(image), "file_path_": path, "relative_file_path_": self.relpaths[i]}


class FullOpenImagesTrain(FullOpenImagesBase):
    """Open Images training images (random crops); the parameters are those of the base class."""

    def __init__(self, size: int | None = None, crop_size: int | None = None, random_crop: bool = True,
                 data_root: str = DATA_ROOT, interpolation: str = "bicubic"):
        super().__init__("train", size=size, crop_size=crop_size, random_crop=random_crop, data_root=data_root,
                         interpolation=interpolation)


class FullOpenImagesValidation(FullOpenImagesBase):
    """Open Images validation images (centre crops); the parameters are those of the base class."""

    def __init__(self, size: int | None = None, crop_size: int | None = None, random_crop: bool = False,
                 data_root: str = DATA_ROOT, interpolation: str = "bicubic"):
        super().__init__("validation", size=size, crop_size=crop_size, random_crop=random_crop, data_root=data_root,
                         interpolation=interpolation)


class SuperresOpenImagesAdvancedBase(Dataset):
    """Super-resolution pairs (``image``, ``LR_image``) from an Open Images split (see ``ImageNetSR``)."""

    def __init__(
        self,
        split: str,                                  # "train" or "validation"
        size: int = 256,                             # side of the high-resolution image
        degradation: str = "bsrgan_light",           # one of ldm.data.superres.DEGRADATIONS
        downscale_f: int = 4,                        # size / downscale_f is the side of LR_image
        min_crop_f: float = 0.5,                     # smallest crop, as a fraction of the smaller image side
        max_crop_f: float = 1.0,                     # largest crop fraction
        random_crop: bool = True,                    # random crop position instead of the centre
        data_root: str = DATA_ROOT,                  # folder holding train/ and validation/
    ):
        self.pipeline = SuperResolutionPipeline(size, degradation, downscale_f, min_crop_f, max_crop_f, random_crop)
        self.folder, self.relpaths = _split_images(data_root, split)

    def __len__(self) -> int:
        return len(self.relpaths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = os.path.join(self.folder, self.relpaths[i])
        image, lr_image = self.pipeline(load_image_array(path))
        return {"image": image, "LR_image": lr_image, "file_path_": path}


class SuperresOpenImagesAdvancedTrain(SuperresOpenImagesAdvancedBase):
    """Super-resolution pairs from the Open Images training images; the parameters are those of the base class."""

    def __init__(self, size: int = 256, degradation: str = "bsrgan_light", downscale_f: int = 4,
                 min_crop_f: float = 0.5, max_crop_f: float = 1.0, random_crop: bool = True,
                 data_root: str = DATA_ROOT):
        super().__init__("train", size, degradation, downscale_f, min_crop_f, max_crop_f, random_crop, data_root)


class SuperresOpenImagesAdvancedValidation(SuperresOpenImagesAdvancedBase):
    """Super-resolution pairs from the Open Images validation images; the parameters are those of the base class."""

    def __init__(self, size: int = 256, degradation: str = "bsrgan_light", downscale_f: int = 4,
                 min_crop_f: float = 0.5, max_crop_f: float = 1.0, random_crop: bool = True,
                 data_root: str = DATA_ROOT):
        super().__init__("validation", size, degradation, downscale_f, min_crop_f, max_crop_f, random_crop,
                         data_root)


def _flip_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    x0, y0, w, h = box
    return 1.0 - (x0 + w), y0, w, h


def _rescale_box(box: Sequence[float], crop_box: Sequence[float], flip: bool) -> tuple[float, float, float, float]:
    """``box`` (x0, y0, w, h) in coordinates relative to ``crop_box``, clipped to it, maybe mirrored."""
    x0 = min(max((box[0] - crop_box[0]) / crop_box[2], 0.0), 1.0)
    y0 = min(max((box[1] - crop_box[1]) / crop_box[3], 0.0), 1.0)
    w = min(box[2] / crop_box[2], 1.0 - x0)
    h = min(box[3] / crop_box[3], 1.0 - y0)
    return _flip_box((x0, y0, w, h)) if flip else (x0, y0, w, h)


def _intersects(box: Sequence[float], crop_box: Sequence[float]) -> bool:
    return (min(box[0] + box[2], crop_box[0] + crop_box[2]) > max(box[0], crop_box[0])
            and min(box[1] + box[3], crop_box[1] + crop_box[3]) > max(box[1], crop_box[1]))


class ObjectsBoundingBoxConditionalBuilder:
    """Token sequence of a set of boxes (taming-transformers' bounding-box conditional builder)."""

    def __init__(
        self,
        no_object_classes: int,                      # number of categories
        no_max_objects: int = 30,                    # objects per sequence (padded / truncated)
        no_tokens: int = 8192,                       # vocabulary size; the last token is "none"
        encode_crop: bool = True,                    # append the crop box; boxes stay in full-image coordinates
        use_group_parameter: bool = True,            # "group of" boxes get category + no_object_classes
    ):
        self.no_object_classes = no_object_classes
        self.no_max_objects = no_max_objects
        self.no_tokens = no_tokens
        self.encode_crop = encode_crop
        self.use_group_parameter = use_group_parameter
        self.no_sections = int(math.sqrt(no_tokens))
        needed = no_object_classes * (2 if use_group_parameter else 1)
        if needed >= no_tokens or self.no_sections ** 2 >= no_tokens:
            raise ValueError(f"no_tokens={no_tokens} is too small for {no_object_classes} categories and a "
                             f"{self.no_sections}x{self.no_sections} coordinate grid")

    @property
    def none(self) -> int:
        return self.no_tokens - 1

    @property
    def embedding_dim(self) -> int:
        return self.no_max_objects * 3 + (2 if self.encode_crop else 0)

    def tokenize_coordinates(self, x: float, y: float) -> int:
        x_discrete = int(round(x * (self.no_sections - 1)))
        y_discrete = int(round(y * (self.no_sections - 1)))
        return y_discrete * self.no_sections + x_discrete

    def token_pair_from_bbox(self, box: Sequence[float]) -> tuple[int, int]:
        return self.tokenize_coordinates(box[0], box[1]), self.tokenize_coordinates(box[0] + box[2], box[1] + box[3])

    def build(self, objects: Sequence[tuple[int, bool, tuple[float, float, float, float]]],
              crop_box: Sequence[float] = (0.0, 0.0, 1.0, 1.0), horizontal_flip: bool = False,
              rng: random.Random | None = None) -> np.ndarray:
        """``objects``: (category number, is group of, (x0, y0, w, h) relative to the full image)."""
        objects = list(objects)[:self.no_max_objects]
        (rng or random.Random()).shuffle(objects)
        objects = [o for o in objects if _intersects(o[2], crop_box)]
        if self.encode_crop:
            reference, extra = (0.0, 0.0, 1.0, 1.0), list(self.token_pair_from_bbox(
                _flip_box(crop_box) if horizontal_flip else crop_box))
        else:
            reference, extra = crop_box, []
        tokens = []
        for category, group_of, box in objects:
            category = category + (self.no_object_classes if self.use_group_parameter and group_of else 0)
            tokens.extend((category, *self.token_pair_from_bbox(_rescale_box(box, reference, horizontal_flip))))
        tokens.extend([self.none] * (3 * self.no_max_objects - len(tokens)))
        return np.asarray(tokens + extra, dtype=np.int64)


class OpenImagesBBoxBase(Dataset):
    """Images with their boxes encoded as ``coordinates_bbox`` tokens (layout-to-image synthesis)."""

    def __init__(
        self,
        split: str,                                  # "train" or "validation"
        size: int = 256,                             # output side length
        data_root: str = DATA_ROOT,                  # folder holding train/, validation/, annotations/
        min_object_area: float = 0.0001,             # drop boxes smaller than this fraction of the image
        min_objects_per_image: int = 2,              # drop images with fewer boxes
        max_objects_per_image: int = 30,             # objects per token sequence
        no_tokens: int = 8192,                       # token vocabulary (BERTEmbedder vocab_size)
        random_crop: bool | None = None,             # random square crop (None: for training only)
        flip_p: float | None = None,                 # flip probability (None: 0.5 for training, else 0)
    ):
        check_size(size)
        self.folder, relpaths = _split_images(data_root, split)
        annotations_dir = os.path.join(resolve_path(data_root), "annotations")
        class_file = os.path.join(annotations_dir, CLASS_FILE)
        box_file = os.path.join(annotations_dir, ANNOTATION_FILES[split])
        for path, what in ((class_file, "LabelName,DisplayName rows"), (box_file, "the Open Images box table")):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Open Images annotation file {path!r} not found; it should hold {what}")
        with open(class_file, "r", encoding="utf-8", newline="") as f:
            rows = [r for r in csv.reader(f) if len(r) >= 2 and r[0] != "LabelName"]
        self.categories = {label: i for i, (label, _) in enumerate(r[:2] for r in rows)}
        self.category_names = [r[1] for r in rows]

        by_id = {os.path.splitext(os.path.basename(p))[0]: p for p in relpaths}
        objects: dict[str, list[tuple[int, bool, tuple[float, float, float, float]]]] = {}
        with open(box_file, "r", encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                image_id = row["ImageID"]
                if image_id not in by_id or row["LabelName"] not in self.categories:
                    continue
                x0, x1, y0, y1 = (float(row[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
                if (x1 - x0) * (y1 - y0) < min_object_area:
                    continue
                objects.setdefault(image_id, []).append(
                    (self.categories[row["LabelName"]], row.get("IsGroupOf", "0") == "1", (x0, y0, x1 - x0, y1 - y0)))
        self.image_ids = sorted(i for i, objs in objects.items() if len(objs) >= min_objects_per_image)
        if not self.image_ids:
            raise FileNotFoundError(f"no image of {self.folder!r} has {min_objects_per_image} or more boxes in "
                                    f"{box_file!r}")
        self.objects = objects
        self.paths = {i: os.path.join(self.folder, by_id[i]) for i in self.image_ids}
        self.size = size
        self.random_crop = split == "train" if random_crop is None else random_crop
        self.flip_p = (0.5 if split == "train" else 0.0) if flip_p is None else flip_p
        self.builder = ObjectsBoundingBoxConditionalBuilder(len(self.categories), max_objects_per_image, no_tokens)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id = self.image_ids[i]
        image = load_image_array(self.paths[image_id])
        h, w = image.shape[:2]
        side = min(h, w)
        top = random_int(h - side + 1) if self.random_crop else (h - side) // 2
        left = random_int(w - side + 1) if self.random_crop else (w - side) // 2
        image = resize(image[top:top + side, left:left + side], self.size, self.size)
        flip = self.flip_p > 0 and float(torch.rand(())) < self.flip_p
        if flip:
            image = np.ascontiguousarray(image[:, ::-1])
        crop_box = (left / w, top / h, side / w, side / h)
        rng = random.Random(int(torch.randint(2**62, ())))
        tokens = self.builder.build(self.objects[image_id], crop_box, flip, rng)
        return {"image": to_float(image), "coordinates_bbox": tokens, "file_path_": self.paths[image_id]}


class OpenImagesBBoxTrain(OpenImagesBBoxBase):
    """Open Images training images with box tokens (random crops and flips); parameters as in the base class."""

    def __init__(self, size: int = 256, data_root: str = DATA_ROOT, min_object_area: float = 0.0001,
                 min_objects_per_image: int = 2, max_objects_per_image: int = 30, no_tokens: int = 8192):
        super().__init__("train", size, data_root, min_object_area, min_objects_per_image, max_objects_per_image,
                         no_tokens)


class OpenImagesBBoxValidation(OpenImagesBBoxBase):
    """Open Images validation images with box tokens (centre crops, no flips); parameters as in the base class."""

    def __init__(self, size: int = 256, data_root: str = DATA_ROOT, min_object_area: float = 0.0001,
                 min_objects_per_image: int = 2, max_objects_per_image: int = 30, no_tokens: int = 8192):
        super().__init__("validation", size, data_root, min_object_area, min_objects_per_image,
                         max_objects_per_image, no_tokens)
