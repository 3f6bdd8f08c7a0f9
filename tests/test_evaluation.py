"""scripts/evaluate.py and ldm.evaluation on image sets, with a stand-in Inception weights file saved here
in torch-fidelity's format (random weights, nothing downloaded): the figures equal those of
torch_fidelity.calculate_metrics on the same folders, reference features are cached by content,
and bad input is reported before any feature is extracted."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.evaluation import TinyFeatures, run_evaluate, shapes_images, write_folder
from helpers.scripts import load_script
from ldm.evaluation import inception
from ldm.evaluation.evaluate import Settings, evaluate
from ldm.evaluation.image_sets import open_image_set
from ldm.scripting.outputs import save_npz

# The stand-in Inception weights (``weights``) are a fixture of tests/conftest.py.


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sets")
    return (write_folder(root / "samples", shapes_images(8, "train", 1)),
            write_folder(root / "reference", shapes_images(8, "validation", 2)))


def tiny_extractor(weights: Path) -> inception.InceptionFeatures:
    extractor = inception.InceptionFeatures(weights)
    extractor._model = TinyFeatures()
    return extractor


@pytest.fixture
def no_extraction(monkeypatch):
    """Fail the test if any Inception feature is extracted (errors must come first)."""
    def fail(*args, **kwargs):
        raise AssertionError("features were extracted before the error")

    monkeypatch.setattr(inception.InceptionFeatures, "__call__", fail)


def test_evaluate_matches_torch_fidelity(folders, weights, tmp_path):
    import torch_fidelity

    samples, reference = folders
    out = tmp_path / "results.json"
    load_script("evaluate").main(["--samples", str(samples), "--reference", str(reference), "--inception_weights",
                                  str(weights), "--metrics", "fid,isc,kid,prc", "--isc_splits", "2",
                                  "--kid_subset_size", "8", "--out", str(out), "--no_cache", "--device", "cpu",
                                  "--no_progress"])
    ours = json.loads(out.read_text())
    for key in ("fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "precision", "recall", "num_samples",
                "num_reference"):
        assert key in ours
    theirs = torch_fidelity.calculate_metrics(
        input1=str(samples), input2=str(reference), cuda=False, isc=True, fid=True, kid=True, prc=True,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(weights), isc_splits=2,
        kid_subset_size=8, cache=False, verbose=False, save_cpu_ram=True)
    pairs = {"fid": "frechet_inception_distance", "isc_mean": "inception_score_mean",
             "isc_std": "inception_score_std", "kid_mean": "kernel_inception_distance_mean",
             "kid_std": "kernel_inception_distance_std", "precision": "precision", "recall": "recall"}
    for ours_key, their_key in pairs.items():
        a, b = ours[ours_key], theirs[their_key]
        assert abs(a - b) <= 1e-3 * max(abs(b), 1e-12), f"{ours_key}: {a} vs torch-fidelity {b}"
    assert ours["fid"] > 0 and ours["isc_mean"] > 1.0
    assert ours["num_samples"] == 8 and ours["num_reference"] == 8
    assert any("not a valid FID" in w for w in ours["warnings"])  # 8 samples < 2048 dimensions


def test_reference_features_are_cached_by_content(folders, weights, tmp_path, monkeypatch):
    samples, reference = folders
    extractor = tiny_extractor(weights)
    calls = []
    real_call = inception.InceptionFeatures.__call__

    def counting(self, batches, total, desc="", progress=True):
        calls.append(desc)
        return real_call(self, batches, total, desc, progress=False)

    monkeypatch.setattr(inception.InceptionFeatures, "__call__", counting)
    small_ref = write_folder(tmp_path / "ref", np.stack([np.asarray(Image.open(p)) for p in
                                                         sorted(reference.glob("*.png"))[:4]]))
    small_samples = write_folder(tmp_path / "samples", np.stack([np.asarray(Image.open(p)) for p in
                                                                 sorted(samples.glob("*.png"))[:4]]))
    run = lambda: evaluate(open_image_set(small_samples), open_image_set(small_ref, "--reference"),  # noqa: E731
                           extractor, Settings(metrics=("kid",)), cache_dir=tmp_path / "cache", progress=False)
    first = run()
    assert calls == ["features --reference", "features --samples"]
    second = run()
    assert calls[2:] == ["features --samples"]  # the reference came from the cache
    assert second["kid_mean"] == pytest.approx(first["kid_mean"], rel=1e-6)
    # changed content, same path: a new cache entry
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(small_ref / "0000.png")
    run()
    assert calls[3:] == ["features --reference", "features --samples"]


def test_npz_and_folder_give_the_same_features(weights, tmp_path):
    images = shapes_images(2, "train", 5)
    folder = write_folder(tmp_path / "f", images)
    npz = save_npz(tmp_path / "s.npz", images)
    extractor = inception.InceptionFeatures(weights)
    a = extractor(open_image_set(folder).batches(2), 2, progress=False)
    b = extractor(open_image_set(npz).batches(2), 2, progress=False)
    for layer in a:
        torch.testing.assert_close(a[layer], b[layer])
    assert a[inception.POOL_FEATURES].shape == (2, 2048)
    assert a[inception.POOL_FEATURES].std(0).mean() > 0  # the stand-in weights tell images apart


@pytest.mark.slow  # a 2048-dimensional FID: about ten seconds of eigenvalues on two cores
def test_adm_reference_statistics_are_used_for_fid(weights, tmp_path, monkeypatch):
    images = shapes_images(4, "train", 6)
    mu, sigma = np.zeros(2048), np.eye(2048)
    ref = tmp_path / "VIRTUAL_ref.npz"
    np.savez(ref, arr_0=images, mu=mu, sigma=sigma)
    extractor = tiny_extractor(weights)
    result = evaluate(open_image_set(write_folder(tmp_path / "s", images)), open_image_set(ref, "--reference"),
                      extractor, Settings(metrics=("fid",)), cache_dir=None, progress=False)
    feats = extractor(open_image_set(tmp_path / "s").batches(4), 4, progress=False)[inception.POOL_FEATURES].numpy()
    m, s = feats.mean(0).astype(np.float64), np.cov(feats, rowvar=False)
    expected = float(m @ m + np.trace(s) + 2048 - 2 * np.sqrt(np.clip(np.linalg.eigvalsh(s), 0, None)).sum())
    assert result["fid"] == pytest.approx(expected, rel=1e-4)
    assert result["settings"]["reference_statistics"] == "precomputed mu/sigma"


# ------------------------------------------------------------------------------------------------
# bad input: one clear error (or warning) before any feature is extracted
# ------------------------------------------------------------------------------------------------


def test_missing_and_empty_sets(folders, weights, tmp_path, no_extraction):
    samples, reference = folders
    with pytest.raises(FileNotFoundError, match=r"--samples .*nowhere: not found"):
        run_evaluate("--samples", str(tmp_path / "nowhere"), "--reference", str(reference),
                     "--inception_weights", str(weights))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"--reference .*empty: the folder holds no .png"):
        run_evaluate("--samples", str(samples), "--reference", str(tmp_path / "empty"),
                     "--inception_weights", str(weights))
    np.savez(tmp_path / "floats.npz", arr_0=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"arr_0 is float32 .* expected \(N, H, W, 3\) uint8"):
        run_evaluate("--samples", str(tmp_path / "floats.npz"), "--inception_weights", str(weights),
                     "--metrics", "isc")


def test_mixed_sizes_and_modes(folders, weights, tmp_path, no_extraction, caplog):
    samples, reference = folders
    mixed = write_folder(tmp_path / "mixed", shapes_images(3, "train", 0))
    Image.fromarray(shapes_images(1, "train", 0, size=32)[0]).save(mixed / "big.png")
    with pytest.raises(ValueError, match=r"images differ in size: 3 are 16x16 .*1 are 32x32 \(e.g. big.png\)"):
        run_evaluate("--samples", str(mixed), "--reference", str(reference), "--inception_weights", str(weights))
    larger = write_folder(tmp_path / "larger", shapes_images(4, "train", 0, size=32))
    with pytest.raises(ValueError, match=r"differ in image size.*--allow_size_mismatch"):
        run_evaluate("--samples", str(larger), "--reference", str(reference), "--inception_weights", str(weights))
    grey = write_folder(tmp_path / "grey", shapes_images(4, "train", 0), mode="L")
    with caplog.at_level(logging.WARNING), pytest.raises(AssertionError, match="extracted"):
        run_evaluate("--samples", str(grey), "--reference", str(reference), "--inception_weights", str(weights),
                     "--metrics", "fid")
    assert "differ in image mode" in caplog.text


def test_too_few_samples(folders, weights, no_extraction):
    samples, reference = folders
    with pytest.raises(ValueError, match="10 splits .* only 8 samples"):
        run_evaluate("--samples", str(samples), "--inception_weights", str(weights), "--metrics", "isc")
    with pytest.raises(ValueError, match="give --reference"):
        run_evaluate("--samples", str(samples), "--inception_weights", str(weights), "--metrics", "fid")
    with pytest.raises(ValueError, match="k=8 needs more than 8"):
        run_evaluate("--samples", str(samples), "--reference", str(reference), "--inception_weights", str(weights),
                     "--metrics", "prc", "--prc_neighborhood", "8")
    with pytest.raises(ValueError, match="--metrics must be"):
        run_evaluate("--samples", str(samples), "--metrics", "fid,bogus")


def test_fid_with_fewer_samples_than_dimensions_warns_first(folders, weights, caplog, no_extraction):
    samples, reference = folders
    with caplog.at_level(logging.WARNING), pytest.raises(AssertionError, match="extracted"):
        run_evaluate("--samples", str(samples), "--reference", str(reference), "--inception_weights", str(weights),
                     "--metrics", "fid")
    assert "FID is not defined for 8 samples of 2048-dimensional features" in caplog.text


def test_missing_weights_name_the_file_places_and_url(folders, tmp_path, monkeypatch, no_extraction):
    samples, reference = folders
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(inception.INCEPTION_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as err:
        run_evaluate("--samples", str(samples), "--reference", str(reference))
    msg = str(err.value)
    assert inception.INCEPTION_FILENAME in msg and inception.INCEPTION_URL in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg and "$LDM_INCEPTION_WEIGHTS" in msg
    with pytest.raises(FileNotFoundError, match=r"--inception_weights\) not found: .*nope.pth"):
        run_evaluate("--samples", str(samples), "--reference", str(reference), "--inception_weights",
                     str(tmp_path / "nope.pth"))
    monkeypatch.setenv(inception.INCEPTION_ENV, str(tmp_path / "env.pth"))
    with pytest.raises(FileNotFoundError, match=r"\$LDM_INCEPTION_WEIGHTS\) not found: .*env.pth"):
        run_evaluate("--samples", str(samples), "--reference", str(reference))


def test_weights_found_in_the_hub_cache_and_checked(weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(inception.INCEPTION_ENV, raising=False)
    hub = tmp_path / "torch" / "hub" / "checkpoints" / inception.INCEPTION_FILENAME
    hub.parent.mkdir(parents=True)
    hub.symlink_to(weights)
    assert inception.find_inception_weights() == hub
    torch.save({"fc.weight": torch.zeros(10, 2048)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"fc.weight has shape \(10, 2048\)"):
        inception.check_inception_weights(tmp_path / "wrong.pth")
    torch.save({"fc.weight": torch.zeros(1008, 2048), "evil": logging.Logger}, tmp_path / "pickle.pth")
    with pytest.raises(ValueError, match="cannot be read as a plain state dict"):
        inception.check_inception_weights(tmp_path / "pickle.pth")
