"""DDIM and PLMS samplers on tiny stand-in models whose answers are known in closed form.

An "oracle" predicts the exact noise of data concentrated at one point x_data, so every x_0 estimate
of a correct DDIM / PLMS step is x_data; a "zero" model predicts no noise, so DDIM just rescales.
"""
from __future__ import annotations

import pytest
import torch

from helpers.oracles import SHAPE, STEPS, StubDiffusion, oracle
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.plms import PLMSSampler
from ldm.models.diffusion.denoiser import cat_conditioning


@pytest.mark.parametrize("sampler_cls, eta", [(DDIMSampler, 0.0), (DDIMSampler, 1.0), (PLMSSampler, 0.0)])
def test_every_x0_estimate_is_the_data_point(sampler_cls, eta):
    model = oracle()
    pred_x0s, steps = [], []
    torch.manual_seed(0)
    samples, intermediates = sampler_cls(model).sample(
        STEPS, 2, SHAPE, conditioning=None, eta=eta, verbose=False, callback=steps.append,
        img_callback=lambda pred_x0, i: pred_x0s.append(pred_x0))
    assert steps == list(range(STEPS))
    assert len(pred_x0s) == STEPS
    for p in pred_x0s:
        assert torch.allclose(p, model.x_data, atol=1e-4)
    # default log_every_t=100: the start, the first step and the last step
    assert len(intermediates["x_inter"]) == len(intermediates["pred_x0"]) == 3
    assert samples.shape == (2, *SHAPE)
    if eta == 0.0:
        # deterministic: the final sample is sqrt(a) x_data + sqrt(1 - a) eps with a = alphas_cumprod[0]
        a0 = model.alphas_cumprod[0]
        eps = (samples - a0.sqrt() * model.x_data) / (1 - a0).sqrt()
        assert eps.abs().max() < 10 and eps.std() > 0.3


def test_intermediates_every_step_and_plms_model_calls():
    model = oracle()
    _, intermediates = DDIMSampler(model).sample(STEPS, 2, SHAPE, eta=0.0, verbose=False, log_every_t=1)
    assert len(intermediates["x_inter"]) == STEPS + 1
    model.calls.clear()
    PLMSSampler(model).sample(STEPS, 2, SHAPE, eta=0.0, verbose=False)
    assert len(model.calls) == STEPS + 1  # the first (improved Euler) step evaluates the model twice


@pytest.mark.parametrize("sampler_cls", [DDIMSampler, PLMSSampler])
def test_mask_keeps_the_known_region(sampler_cls):
    model = StubDiffusion("zero")
    x0 = torch.full((2, *SHAPE), 3.0)
    mask = torch.zeros(2, 1, *SHAPE[1:])
    mask[..., :2] = 1.0  # left half known
    torch.manual_seed(0)
    samples, _ = sampler_cls(model).sample(STEPS, 2, SHAPE, mask=mask, x0=x0, x_T=torch.zeros(2, *SHAPE),
                                           eta=0.0, verbose=False)
    known, unknown = samples[..., :2], samples[..., 2:]
    assert torch.equal(unknown, torch.zeros_like(unknown))  # no noise predicted: zeros stay zeros
    assert (known - 3.0).abs().mean() < 0.1 and (known - 3.0).abs().max() < 0.6  # x0 up to the last step's noise
    with pytest.raises(ValueError, match="x0"):
        sampler_cls(model).sample(STEPS, 2, SHAPE, mask=mask, eta=0.0, verbose=False)


def test_stochastic_encode_then_decode_round_trip():
    model = oracle()
    sampler = DDIMSampler(model)
    sampler.make_schedule(ddim_num_steps=STEPS, ddim_eta=0.0, verbose=False)
    t_enc = 6
    noise = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(5))
    t = torch.full((2,), t_enc)
    z = sampler.stochastic_encode(model.x_data, t, noise=noise)
    a = sampler.ddim_alphas[t_enc]
    assert torch.allclose(z, a.sqrt() * model.x_data + (1 - a).sqrt() * noise, atol=1e-6)
    decoded = sampler.decode(z, None, t_start=t_enc, verbose=False)
    # as in the original, decoding starts one schedule position below t_start; the oracle's noise is
    # fixed by that first step, and the last step lands on alphas_cumprod[0], not on 1
    a1 = sampler.ddim_alphas[t_enc - 1]
    eps = (z - a1.sqrt() * model.x_data) / (1 - a1).sqrt()
    a0 = sampler.ddim_alphas_prev[0]
    assert torch.allclose(decoded, a0.sqrt() * model.x_data + (1 - a0).sqrt() * eps, atol=1e-4)
    assert (decoded - model.x_data).abs().max() < (z - model.x_data).abs().max()
    assert torch.equal(sampler.decode(z, None, t_start=0, verbose=False), z)  # no steps, no change
    # the full-length schedule path (its sigmas live on the sampler)
    z_orig = sampler.stochastic_encode(model.x_data, torch.full((2,), 30), use_original_steps=True, noise=noise)
    out = sampler.decode(z_orig, None, t_start=30, use_original_steps=True, verbose=False)
    a1 = model.alphas_cumprod[29]
    eps = (z_orig - a1.sqrt() * model.x_data) / (1 - a1).sqrt()
    a0 = model.alphas_cumprod_prev[0]  # 1: the full schedule ends on the data
    assert torch.allclose(out, a0.sqrt() * model.x_data + (1 - a0).sqrt() * eps, atol=1e-4)

def test_guidance_is_one_batched_forward():
    model = StubDiffusion("cond")
    sampler = DDIMSampler(model)
    x = torch.zeros(2, *SHAPE)
    t = torch.full((2,), 5)
    e_t = model.diffusion.denoiser(model.apply_model, torch.ones(2), torch.zeros(2), 3.0).model_output(x, t)
    assert model.calls == [4]
    assert torch.allclose(e_t, torch.full_like(e_t, 3.0))  # 0 + 3 * (1 - 0)
    model.calls.clear()
    sampler.sample(STEPS, 2, SHAPE, conditioning=torch.ones(2), unconditional_guidance_scale=2.0,
                   unconditional_conditioning=torch.zeros(2), eta=0.0, verbose=False)
    assert model.calls == [4] * STEPS
    model.calls.clear()
    model.diffusion.denoiser(model.apply_model, torch.ones(2), torch.zeros(2), 1.0).model_output(x, t)
    assert model.calls == [2]  # scale 1: no unconditional pass


def test_cat_conditioning_handles_dicts_and_lists():
    c = {"c_crossattn": [torch.ones(2, 1, 3)], "c_concat": [torch.ones(2, 4, 2, 2)]}
    uc = {"c_crossattn": [torch.zeros(2, 1, 3)], "c_concat": [torch.zeros(2, 4, 2, 2)]}
    both = cat_conditioning(uc, c)
    assert both["c_crossattn"][0].shape == (4, 1, 3) and both["c_crossattn"][0][:2].sum() == 0
    assert cat_conditioning([torch.zeros(1)], [torch.ones(1)])[0].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="keys"):
        cat_conditioning({"c_crossattn": [torch.zeros(1)]}, c)


def test_plms_rejects_nonzero_eta():
    with pytest.raises(ValueError, match="0.5"):
        PLMSSampler(oracle()).sample(STEPS, 2, SHAPE, eta=0.5, verbose=False)


def test_buffers_follow_the_model_and_cuda_is_never_called(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("a sampler moved a tensor to CUDA by itself")

    monkeypatch.setattr(torch.Tensor, "cuda", no_cuda)
    model = oracle()
    sampler = DDIMSampler(model)
    samples, _ = sampler.sample(STEPS, 2, SHAPE, eta=1.0, verbose=False)
    tensors = {k: v for k, v in vars(sampler).items() if isinstance(v, torch.Tensor)}
    assert {"ddim_alphas", "ddim_sigmas", "ddim_alphas_prev", "ddim_sqrt_one_minus_alphas", "alphas_cumprod",
            "ddim_sigmas_for_original_num_steps"} <= set(tensors)
    assert all(v.device == model.betas.device for v in tensors.values())
    assert torch.isfinite(samples).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_on_the_gpu_keeps_everything_there():
    model = oracle().cuda()
    model.x_data = model.x_data.cuda()
    for sampler in (DDIMSampler(model), PLMSSampler(model)):
        samples, _ = sampler.sample(STEPS, 2, SHAPE, eta=0.0, verbose=False)
        assert samples.is_cuda and sampler.ddim_alphas.is_cuda
