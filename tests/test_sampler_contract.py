"""The same checks for every registered sampler, through ``make_sampler(name, model).sample(...)``: shapes,
the model's device, same seed same result, classifier-free guidance, inpainting with a mask,
callbacks, and a given x_T, on a small class-conditional LDM (20 training steps, VQ first stage)."""
from __future__ import annotations

import pytest
import torch

from helpers.scripts import script
from ldm.models.diffusion.sampling import SAMPLERS, SamplerSpec, make_sampler, resolve_sampler_name, sampler_names

SHAPE = (3, 8, 8)
STEPS = 5
NAMES = sorted(SAMPLERS)


def steps_of(name: str) -> int | None:
    return None if name == "ddpm" else STEPS


def draw(name: str, model, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return make_sampler(name, model).sample(steps_of(name), 2, SHAPE, verbose=False, **kwargs)


def conditioning(model, labels):
    return model.get_learned_conditioning({"class_label": torch.tensor(labels)})


def test_every_sampler_is_covered():
    assert {"ddpm", "ddim", "plms", "dpmpp2m", "dpmpp3m", "unipc", "unipc3", "euler_karras",
            "heun_karras"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_device_and_seed(name, tiny_cin_ldm, monkeypatch):
    model = tiny_cin_ldm
    def no_cuda(*args, **kwargs):
        raise AssertionError("a sampler moved a tensor to CUDA by itself")

    monkeypatch.setattr(torch.Tensor, "cuda", no_cuda)
    c = conditioning(model, [3, 5])
    samples, intermediates = draw(name, model, conditioning=c)
    assert samples.shape == (2, *SHAPE) and samples.dtype == torch.float32 and torch.isfinite(samples).all()
    assert samples.device == model.betas.device
    assert len(intermediates["x_inter"]) == len(intermediates["pred_x0"]) >= 2
    assert all(x.shape == samples.shape for x in intermediates["x_inter"] + intermediates["pred_x0"])
    again, _ = draw(name, model, conditioning=c)
    other, _ = draw(name, model, seed=1, conditioning=c)
    assert torch.equal(samples, again) and not torch.allclose(samples, other)


@pytest.mark.parametrize("name", NAMES)
def test_classifier_free_guidance(name, tiny_cin_ldm):
    model = tiny_cin_ldm
    c, uc = conditioning(model, [3, 5]), conditioning(model, [1000, 1000])
    calls = []
    apply_model = model.apply_model

    def counting(x, t, cond):
        calls.append(x.shape[0])
        return apply_model(x, t, cond)

    model.apply_model = counting
    try:
        guided, _ = draw(name, model, conditioning=c, unconditional_conditioning=uc, unconditional_guidance_scale=3.0)
        assert set(calls) == {4}  # one forward over cat([uc, c]) per evaluation
        calls.clear()
        plain, _ = draw(name, model, conditioning=c)
        scale_one, _ = draw(name, model, conditioning=c, unconditional_conditioning=uc,
                            unconditional_guidance_scale=1.0)
        assert set(calls) == {2}
    finally:
        del model.apply_model

    def combined(x, t, cond):  # the guided prediction as a single model
        e_u, e_c = apply_model(x, t, uc), apply_model(x, t, c)
        return e_u + 3.0 * (e_c - e_u)

    model.apply_model = combined
    try:
        reference, _ = draw(name, model, conditioning=c)
    finally:
        del model.apply_model
    assert torch.equal(plain, scale_one) and not torch.allclose(plain, guided)
    assert torch.allclose(guided, reference, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_mask_keeps_the_known_region(name, tiny_cin_ldm):
    model = tiny_cin_ldm
    c = conditioning(model, [3, 5])
    x0 = torch.full((2, *SHAPE), 0.7)
    mask = torch.zeros(2, 1, *SHAPE[1:])
    mask[..., :4] = 1.0  # left half known
    samples, _ = draw(name, model, conditioning=c, mask=mask, x0=x0)
    free, _ = draw(name, model, conditioning=c)
    known, known_free = samples[..., :4], free[..., :4]
    assert (known - 0.7).abs().mean() < 0.2 < (known_free - 0.7).abs().mean()
    with pytest.raises(ValueError, match="x0"):
        draw(name, model, conditioning=c, mask=mask)


@pytest.mark.parametrize("name", NAMES)
def test_callbacks_and_quantized_x0(name, tiny_cin_ldm):
    model = tiny_cin_ldm
    c = conditioning(model, [3, 5])
    steps, pred_x0s = [], []
    samples, _ = draw(name, model, conditioning=c, callback=steps.append,
                      img_callback=lambda x0, i: pred_x0s.append((i, x0)))
    n = model.num_timesteps if name == "ddpm" else len(steps)
    assert steps == list(range(n)) and n >= STEPS - 1
    assert [i for i, _ in pred_x0s] == steps and all(x.shape == samples.shape for _, x in pred_x0s)
    quantized = []
    q_samples, _ = draw(name, model, conditioning=c, quantize_x0=True,
                        img_callback=lambda x0, i: quantized.append(x0))
    assert not torch.allclose(q_samples, samples)
    if name != "plms":  # PLMS reports the x0 of its multistep eps, as the original; the others the denoiser's
        codebook = model.first_stage_model.quantize.embedding.weight  # (n_embed, C)
        last = quantized[-1].permute(0, 2, 3, 1).reshape(-1, SHAPE[0])
        # codebook entries, up to the rounding of the straight-through estimator
        assert torch.cdist(last, codebook).min(dim=1).values.max() < 2e-4


@pytest.mark.parametrize("name", NAMES)
def test_given_x_T(name, tiny_cin_ldm):
    model = tiny_cin_ldm
    c = conditioning(model, [3, 5])
    x_T = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(7))
    a, _ = draw(name, model, seed=0, conditioning=c, x_T=x_T)
    b, _ = draw(name, model, seed=0, conditioning=c, x_T=x_T.clone())
    other, _ = draw(name, model, seed=0, conditioning=c, x_T=-x_T)
    assert torch.equal(a, b) and not torch.allclose(a, other)
    if not SAMPLERS[name].takes_eta:  # deterministic given x_T, whatever the seed
        seeded, _ = draw(name, model, seed=3, conditioning=c, x_T=x_T)
        assert torch.equal(a, seeded)


@pytest.mark.parametrize("name", NAMES)
def test_img2img_starts_from_the_noised_image(name, tiny_cin_ldm):
    model = tiny_cin_ldm
    c = conditioning(model, [3, 5])
    x0 = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(4))
    sampler = make_sampler(name, model)
    S = steps_of(name)
    torch.manual_seed(0)
    light = sampler.img2img(x0, S, 1, c, verbose=False)  # one step from the lowest noise level
    torch.manual_seed(0)
    full = sampler.img2img(x0, S, len(sampler.sigmas(S)) - 1, c, verbose=False)
    assert light.shape == full.shape == x0.shape
    assert (light - x0).abs().mean() < 0.1 < (full - x0).abs().mean()


def test_a_new_sampler_is_one_function_and_one_registry_line(tiny_cin_ldm, monkeypatch):
    def euler(model, x, sigmas, i, state, noise):
        """Euler's method on the probability-flow ODE (Karras et al. 2022, eq. 4)."""
        denoised = model(x, sigmas[i])
        return x + (sigmas[i + 1] - sigmas[i]) * (x - denoised) / sigmas[i], denoised

    monkeypatch.setitem(SAMPLERS, "euler", SamplerSpec(euler, "log_sigma"))
    c = conditioning(tiny_cin_ldm, [3, 5])
    x_T = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(7))
    ours, _ = make_sampler("euler", tiny_cin_ldm).sample(STEPS, 2, SHAPE, conditioning=c, x_T=x_T, verbose=False)
    ddim, _ = make_sampler("euler_karras", tiny_cin_ldm).sample(STEPS, 2, SHAPE, conditioning=c, x_T=x_T, verbose=False,
                                                            sigmas=make_sampler("euler", tiny_cin_ldm).sigmas(STEPS))
    assert torch.allclose(ours, ddim, atol=1e-5)  # Euler is the DDIM update (eta 0) on the same grid
    assert "euler" in sampler_names() and resolve_sampler_name("EULER") == "euler"


@pytest.mark.parametrize("sampler", ["unipc", "ddpm"])
def test_img2img_script_takes_any_sampler(sampler, cin_ckpt, tmp_path):
    from PIL import Image

    Image.fromarray(torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8).numpy()).save(tmp_path / "init.png")
    config, ckpt = cin_ckpt
    paths = script("img2img").main(["--init_img", str(tmp_path / "init.png"), "--strength", "0.5", "--ddim_steps", "4",
                                    "--device", "cpu", "--class_label", "3", "--config", str(config), "--ckpt",
                                    str(ckpt), "--outdir", str(tmp_path / "out"), "--sampler", sampler])
    assert len([p for p in paths if p.parent.name == "samples"]) == 2 and (tmp_path / "out" / "grid-0000.png").is_file()
    with pytest.raises(ValueError, match="deterministic and takes eta=0 only"):
        script("img2img").main(["--init_img", str(tmp_path / "init.png"), "--class_label", "3", "--config", str(config),
                                "--ckpt", str(ckpt), "--ddim_steps", "4", "--sampler", "unipc", "--ddim_eta", "0.5"])
