"""LPIPS reads its VGG16 and linear-head weights from local files only: explicit paths, environment
variables, the default caches; it says clearly what is missing; it reads nothing when a state dict
supplies the weights, on the meta device, or with pretrained=False."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from ldm.modules.losses import lpips as lp

VGG_WEIGHT_KEYS = ("0", "2", "5", "7", "10", "12", "14", "17", "19", "21", "24", "26", "28")


class _NotATensor:
    """Something a weights file must not hold."""


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, Path]:
    """A torchvision-style VGG16 file and an LPIPS vgg.pth, with random values, written once."""
    root = tmp_path_factory.mktemp("lpips_weights")
    g = torch.Generator().manual_seed(0)
    features = lp._vgg16_features()
    vgg = {f"features.{k}": torch.randn(v.shape, generator=g) * 0.01 for k, v in features.state_dict().items()}
    vgg["classifier.0.bias"] = torch.zeros(4)  # the real file also holds the classifier
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(lp.LPIPS_CHANNELS)}
    paths = {"vgg": root / lp.VGG16_FILENAME, "lin": root / "vgg.pth"}
    torch.save(vgg, paths["vgg"])
    torch.save(heads, paths["lin"])
    return paths


@pytest.fixture
def no_default_files(tmp_path, monkeypatch) -> Path:
    """Empty default locations: torch hub, the XDG cache, the working directory; no env vars."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(lp.VGG16_ENV, raising=False)
    monkeypatch.delenv(lp.LPIPS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _assert_loaded(model: lp.LPIPS, files: dict[str, Path]) -> None:
    vgg = torch.load(files["vgg"], weights_only=True)
    heads = torch.load(files["lin"], weights_only=True)
    sd = model.state_dict()
    for i, (start, stop) in enumerate(lp.VGG16_SLICES, start=1):
        for idx in VGG_WEIGHT_KEYS:
            if start <= int(idx) < stop:
                assert torch.equal(sd[f"net.slice{i}.{idx}.weight"], vgg[f"features.{idx}.weight"])
                assert torch.equal(sd[f"net.slice{i}.{idx}.bias"], vgg[f"features.{idx}.bias"])
    for key, value in heads.items():
        assert torch.equal(sd[key], value)
    assert model.pending_pretrained == set()


def test_explicit_paths(weight_files, no_default_files):
    model = lp.LPIPS(vgg_path=weight_files["vgg"], lpips_path=weight_files["lin"])
    assert model.pending_pretrained == {"net", "lin"}  # nothing read at construction
    model.load_pretrained()
    _assert_loaded(model, weight_files)
    assert not any(p.requires_grad for p in model.parameters())


def test_env_vars_and_loading_on_first_use(weight_files, no_default_files, monkeypatch):
    monkeypatch.setenv(lp.VGG16_ENV, str(weight_files["vgg"]))
    monkeypatch.setenv(lp.LPIPS_ENV, str(weight_files["lin"]))
    model = lp.LPIPS().eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    d_same = model(x, x)
    _assert_loaded(model, weight_files)
    assert d_same.shape == (1, 1, 1, 1) and d_same.item() == 0.0
    assert model(x, -x).item() > 0


def test_default_cache_locations(weight_files, no_default_files):
    hub = no_default_files / "torch" / "hub" / "checkpoints"
    cache = no_default_files / "cache" / "ldm" / "lpips"
    hub.mkdir(parents=True)
    cache.mkdir(parents=True)
    (hub / lp.VGG16_FILENAME).symlink_to(weight_files["vgg"])
    (cache / "vgg.pth").symlink_to(weight_files["lin"])
    model = lp.LPIPS()
    model.load_pretrained()
    _assert_loaded(model, weight_files)


def test_missing_files_give_a_clear_error(weight_files, no_default_files, monkeypatch):
    model = lp.LPIPS()  # constructing never needs the files
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(FileNotFoundError) as err:
        model(x, x)
    msg = str(err.value)
    assert lp.VGG16_FILENAME in msg and lp.VGG16_URL in msg and lp.VGG16_ENV in msg
    assert str(no_default_files / "torch" / "hub" / "checkpoints" / lp.VGG16_FILENAME) in msg

    monkeypatch.setenv(lp.VGG16_ENV, str(weight_files["vgg"]))
    with pytest.raises(FileNotFoundError) as err:
        model.load_pretrained()
    msg = str(err.value)
    assert "vgg.pth" in msg and lp.LPIPS_ENV in msg
    assert "PerceptualSimilarity" in msg and "heibox.uni-heidelberg.de" in msg
    assert str(no_default_files / "cache" / "ldm" / "lpips" / "vgg.pth") in msg
    assert model.pending_pretrained == {"lin"}  # the VGG part did load

    missing = no_default_files / "nowhere" / "vgg.pth"
    with pytest.raises(FileNotFoundError, match="the path given") as err:
        lp.LPIPS(lpips_path=missing, vgg_path=weight_files["vgg"]).load_pretrained()
    assert str(missing) in str(err.value)


def test_state_dict_supplies_the_weights(weight_files, no_default_files):
    source = lp.LPIPS(vgg_path=weight_files["vgg"], lpips_path=weight_files["lin"])
    source.load_pretrained()
    model = lp.LPIPS()
    model.load_state_dict(source.state_dict())  # as from a first-stage checkpoint
    assert model.pending_pretrained == set()
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(model.eval()(x, x * 0.5), source.eval()(x, x * 0.5))  # no file was needed


def test_no_files_touched_on_meta_or_without_pretrained(no_default_files):
    with torch.device("meta"):
        model = lp.LPIPS()
    assert all(p.is_meta for p in model.parameters())
    plain = lp.LPIPS(pretrained=False)
    x = torch.rand(1, 3, 16, 16)
    assert plain(x, x).item() == 0.0  # random weights, no error


def test_first_use_inside_inference_mode(weight_files, no_default_files):
    model = lp.LPIPS(vgg_path=weight_files["vgg"], lpips_path=weight_files["lin"]).eval()
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    with torch.inference_mode():  # e.g. a Lightning validation pass running first
        model(x.detach(), x.detach() * 0.5)
    assert not any(p.is_inference() for p in model.parameters())
    model(x, x * 0.5).sum().backward()  # the weights stay usable with autograd
    assert x.grad is not None


def test_vgg16_wrapper_loads_eagerly(weight_files):
    net = lp.vgg16(pretrained=True, vgg_path=weight_files["vgg"])
    vgg = torch.load(weight_files["vgg"], weights_only=True)
    assert torch.equal(getattr(net.slice5, "28").weight, vgg["features.28.weight"])
    outs = net(torch.rand(1, 3, 32, 32))
    assert [o.shape[1] for o in outs] == list(lp.LPIPS_CHANNELS)


def test_weights_files_are_loaded_safely(tmp_path, weight_files):
    bad = tmp_path / "vgg.pth"
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1), "payload": _NotATensor()}, bad)
    with pytest.raises(pickle.UnpicklingError):
        lp.LPIPS(vgg_path=weight_files["vgg"], lpips_path=bad).load_pretrained()
