"""``ldm.compile``: the U-Net through torch.compile gives the eager outputs, keeps its state-dict keys, and
falls back to eager execution (with a warning) where compilation is unavailable or fails."""
from __future__ import annotations

import logging

import pytest
import torch

from conftest import load_case
from ldm import compile as ldm_compile
from ldm.util import instantiate_from_config


def _unet():
    case = load_case("unet_crossattn")
    m = instantiate_from_config(case["config"]).eval()
    m.load_state_dict(case["state_dict"], strict=True)
    inputs = case["inputs"]
    return m, (inputs["x"], inputs["timesteps"]), {"context": inputs["context"]}


def test_no_cpp_compiler_leaves_the_model_eager(monkeypatch, caplog):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    m, args, kwargs = _unet()
    forward = m.forward
    with caplog.at_level(logging.WARNING, logger="ldm.compile"):
        assert ldm_compile.compile_unet(m) is False
    assert m.forward == forward
    assert "no C++ compiler" in caplog.text and "runs eagerly" in caplog.text


def test_a_failing_compiler_falls_back_to_eager_once(monkeypatch, caplog):
    calls = []

    def broken_compile(fn, **kwargs):
        def run(*a, **k):
            calls.append(kwargs)
            raise RuntimeError("backend exploded\nwith a long trace")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    m, args, kwargs = _unet()
    with torch.no_grad():
        ref = m(*args, **kwargs)
        assert ldm_compile.compile_unet(m) is True
        with caplog.at_level(logging.WARNING, logger="ldm.compile"):
            out1 = m(*args, **kwargs)
            out2 = m(*args, **kwargs)
    assert calls == [{"options": {"freezing": True}}]  # tried once, then eager for good
    assert torch.equal(out1, ref) and torch.equal(out2, ref)
    assert caplog.text.count("failed (RuntimeError: backend exploded); running it eagerly") == 1


def test_compile_unet_finds_the_unet_of_a_diffusion_model(monkeypatch):
    compiled = []
    monkeypatch.setattr(ldm_compile, "compile_forward", lambda module, freeze=True: compiled.append(module) or True)
    case = load_case("ldm_class_crossattn_kl")
    model = instantiate_from_config(case["config"])
    assert ldm_compile.compile_unet(model)
    assert compiled == [model.model.diffusion_model]


@pytest.mark.skipif(ldm_compile.unavailable_reason(torch.device("cpu")) is not None, reason="no C++ compiler")
@pytest.mark.parametrize("convolutions_as_gemm", [False, True])
def test_compiled_unet_matches_eager_and_keeps_its_keys(convolutions_as_gemm, monkeypatch, caplog):
    from ldm.modules import fastpaths

    if convolutions_as_gemm:  # the path of large weights on small maps (fastpaths.Conv2d), here for every convolution
        monkeypatch.setattr(fastpaths, "GEMM_CONV_MIN_WEIGHT", 0)
        monkeypatch.setattr(fastpaths, "GEMM_CONV_MAX_POSITIONS", 1 << 30)
    m, args, kwargs = _unet()
    keys = list(m.state_dict())
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="ldm.compile"):
        ref = m(*args, **kwargs)
        assert ldm_compile.compile_unet(m)
        out = m(*args, **kwargs)
    assert "running it eagerly" not in caplog.text  # compiled, not the eager fallback
    assert list(m.state_dict()) == keys
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, ref.abs().max().item()))


@pytest.mark.slow
@pytest.mark.skipif(ldm_compile.unavailable_reason(torch.device("cpu")) is not None, reason="no C++ compiler")
def test_main_compile_trains_like_the_eager_model(tmp_path):
    """``main.py --compile``: the compiled U-Net's forward and backward give the eager run's weights."""
    from helpers.training import CONFIGS, ckpt_state, run_main

    runs = {}
    for flag in ([], ["--compile"]):
        logdir = run_main(tmp_path / ("compiled" if flag else "eager"), "-b", str(CONFIGS / "ldm_uncond_tiny.yaml"),
                          "-t", "--no-test", "lightning.trainer.max_steps=2", *flag)
        runs[bool(flag)] = ckpt_state(logdir / "checkpoints" / "last.ckpt")["state_dict"]
    for key, eager in runs[False].items():
        if eager.is_floating_point():
            torch.testing.assert_close(runs[True][key], eager, rtol=1e-4, atol=1e-5, msg=key)


def test_main_compile_flag_compiles_the_unet_for_training(tmp_path, monkeypatch):
    from helpers.training import CONFIGS, run_main

    calls = []
    monkeypatch.setattr(ldm_compile, "compile_unet", lambda model, freeze=True: calls.append((model, freeze)))
    run_main(tmp_path, "-b", str(CONFIGS / "ldm_uncond_tiny.yaml"), "-t", "--no-test",
             "lightning.trainer.max_steps=1", "--compile")
    (model, freeze), = calls
    assert type(model).__name__ == "LatentDiffusion" and freeze is False  # weights that train are not constants
