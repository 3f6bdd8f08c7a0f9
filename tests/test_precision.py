"""Mixed precision: every model of the parity cases runs under ``torch.autocast`` with bfloat16 on the CPU
and lands near its float32 output; the scripts expose it as ``--precision``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import load_case
from helpers.scripts import png, run_txt2img
from ldm.scripting import loading
from ldm.util import instantiate_from_config

#: Relative error of bfloat16 autocast against float32 that these small models stay within (8 mantissa bits
#: give about 4e-3 per rounding; errors add up over the layers).
BF16_RTOL = 5e-2


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.float() - ref.float()).norm() / ref.float().norm()).item()


def _autocast_vs_fp32(fn):
    with torch.no_grad():
        ref = fn()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn()
    return out, ref


@pytest.mark.parametrize("name", ["unet_crossattn", "unet_adm_scale_shift"])
def test_unet_under_bf16_autocast(name):
    case = load_case(name)
    m = instantiate_from_config(case["config"]).eval()
    m.load_state_dict(case["state_dict"], strict=True)
    inputs = case["inputs"]
    extra = {k: inputs[k] for k in ("context", "y") if k in inputs}
    out, ref = _autocast_vs_fp32(lambda: m(inputs["x"], timesteps=inputs["timesteps"], **extra))
    assert out.dtype == torch.bfloat16  # it really ran in reduced precision
    assert torch.isfinite(out).all()
    assert _relative_error(out, ref) < BF16_RTOL


@pytest.mark.parametrize("name", ["autoencoder_kl", "autoencoder_vq"])
def test_autoencoders_under_bf16_autocast(name):
    case = load_case(name)
    m = instantiate_from_config(case["config"]).eval()
    m.load_state_dict(case["state_dict"], strict=False)
    x = next(v for k, v in case["inputs"].items() if isinstance(v, torch.Tensor) and v.ndim == 4)
    kwargs = {"sample_posterior": False} if name == "autoencoder_kl" else {}  # the mode, not a random draw
    out, ref = _autocast_vs_fp32(lambda: m(x, **kwargs)[0])
    assert torch.isfinite(out).all()
    assert _relative_error(out, ref) < BF16_RTOL


def test_latent_diffusion_samples_under_bf16_autocast():
    case = load_case("ldm_class_crossattn_kl")
    m = instantiate_from_config(case["config"]).eval()
    m.load_state_dict(case["state_dict"], strict=False)
    from ldm.models.diffusion.ddim import DDIMSampler

    def sample():
        torch.manual_seed(0)
        c = m.get_learned_conditioning({m.cond_stage_key: torch.tensor([0, 1])})
        z, _ = DDIMSampler(m).sample(S=5, batch_size=2, shape=(m.channels, m.image_size, m.image_size),
                                     conditioning=c, eta=0.0, verbose=False)
        return m.decode_first_stage(z)

    out, ref = _autocast_vs_fp32(sample)
    assert torch.isfinite(out).all()
    assert _relative_error(out, ref) < BF16_RTOL


def test_txt2img_precision_flag(txt2img_ckpt, tmp_path):  # noqa: F811 - the fixture
    config, ckpt = txt2img_ckpt
    run_txt2img(config, ckpt, tmp_path / "fp32")
    run_txt2img(config, ckpt, tmp_path / "bf16", "--precision", "bf16")
    a = png(tmp_path / "fp32" / "samples" / "0000.png").astype(np.float64)
    b = png(tmp_path / "bf16" / "samples" / "0000.png").astype(np.float64)
    assert np.abs(a - b).mean() < 8.0  # of 255: the same image, up to bfloat16 rounding
    with pytest.raises(ValueError, match="--precision fp16 needs a CUDA device"):
        run_txt2img(config, ckpt, tmp_path / "fp16", "--precision", "fp16")
    assert not (tmp_path / "fp16").exists()  # refused before anything was loaded or written


def test_precision_names():
    cpu = torch.device("cpu")
    assert loading.autocast_dtype("fp32", cpu) is None
    assert loading.autocast_dtype("autocast", cpu) is torch.bfloat16
    assert loading.autocast_dtype("autocast", torch.device("cuda")) is torch.float16
    with pytest.raises(ValueError, match="must be one of"):
        loading.autocast_dtype("int8", cpu)
