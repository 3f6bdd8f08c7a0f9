"""Pixel-space DDPM: parity with the original (buffers, q_sample, p_losses, seeded ancestral sampling),
the Lightning plumbing (EMA scope, optimisers, checkpoint loading) and the validation of string options."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_close, load_case
from helpers.models import TINY_UNET, tiny_ddpm
from ldm.models.diffusion.ddpm import DiffusionWrapper
from ldm.util import instantiate_from_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ddpm_pixel_parity():
    case = load_case("ddpm_pixel")
    m = instantiate_from_config(case["config"])
    m.load_state_dict(case["state_dict"], strict=True)
    m.eval()
    inputs, outputs = case["inputs"], case["outputs"]
    with torch.no_grad():
        x0 = m.get_input(inputs["batch"], "image")
        loss, loss_dict = m.p_losses(x0, inputs["t"], noise=inputs["noise"])
        assert_close(loss, outputs["loss"], "loss")
        assert set(loss_dict) == {k.split("/", 1)[1] for k in outputs if k.startswith("loss_dict/")}
        for key, value in loss_dict.items():
            assert_close(value, outputs[f"loss_dict/{key}"], key)
        assert_close(m.q_sample(x0, inputs["t"], noise=inputs["noise"]), outputs["q_sample"], "q_sample")
        for key in outputs:
            if key.startswith("buffer/"):
                assert_close(getattr(m, key[len("buffer/"):]), outputs[key], key)
        torch.manual_seed(99)
        sample = m.p_sample_loop((2, 3, 8, 8), verbose=False)
    assert_close(sample, outputs["p_sample_loop_seed99"], "p_sample_loop_seed99")


def test_schedule_buffers_and_state_dict_keys():
    m = tiny_ddpm(use_ema=False)
    buffers = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
               "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
               "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
               "posterior_mean_coef1", "posterior_mean_coef2"]
    keys = set(m.state_dict())
    assert {k for k in keys if not k.startswith("model.")} == set(buffers)  # lvlb_weights, logvar not persistent
    assert m.lvlb_weights.shape == (20,) and m.logvar.shape == (20,)
    assert torch.allclose(m.alphas_cumprod, torch.cumprod(1 - m.betas.double(), 0).float())
    learned = tiny_ddpm(use_ema=False, learn_logvar=True, logvar_init=0.5)
    assert "logvar" in dict(learned.named_parameters()) and torch.all(learned.logvar == 0.5)


def test_x0_parameterization_targets_the_clean_sample():
    m = tiny_ddpm(use_ema=False, parameterization="x0", loss_type="l1")
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([3, 7])
    noise = torch.randn_like(x)
    with torch.no_grad():
        loss, _ = m.p_losses(x, t, noise=noise)
        expected = (m.model(m.q_sample(x, t, noise), t) - x).abs().mean()
    assert_close(loss, expected, "x0 l1 loss")


@pytest.mark.parametrize("kwargs, bad", [
    ({"parameterization": "v"}, "'v'"),
    ({"conditioning_key": "film"}, "'film'"),
    ({"loss_type": "huber"}, "'huber'"),
])
def test_bad_string_options_raise_naming_the_value(kwargs, bad):
    with pytest.raises(ValueError) as err:
        tiny_ddpm(**kwargs)
    assert bad in str(err.value)
    allowed = {"parameterization": "eps", "conditioning_key": "crossattn", "loss_type": "l2"}[next(iter(kwargs))]
    assert allowed in str(err.value)


def test_diffusion_wrapper_rejects_unknown_key_at_construction():
    with pytest.raises(ValueError, match="'cross'"):
        DiffusionWrapper(TINY_UNET, "cross")


def test_ema_scope_swaps_and_restores_weights():
    m = tiny_ddpm(use_ema=True)
    param = next(m.model.parameters())
    original = param.detach().clone()
    with torch.no_grad():
        param.add_(1.0)  # training moved the weights; the EMA still holds the initial ones
    with m.ema_scope("test"):
        assert torch.equal(next(m.model.parameters()), original)
    assert torch.equal(next(m.model.parameters()), original + 1.0)


def test_training_step_updates_ema_and_optimizer_uses_scheduler():
    scheduler = {"target": "ldm.lr_scheduler.LambdaLinearScheduler",
                 "params": {"warm_up_steps": [10], "cycle_lengths": [100], "f_start": [0.1], "f_max": [1.0],
                            "f_min": [1.0]}}
    m = tiny_ddpm(use_ema=True, scheduler_config=scheduler)
    m.learning_rate = 2e-3
    opts, scheds = m.configure_optimizers()
    assert isinstance(opts[0], torch.optim.AdamW) and opts[0].param_groups[0]["lr"] == pytest.approx(2e-3 * 0.1)
    assert scheds[0]["interval"] == "step"
    batch = {"image": torch.rand(2, 8, 8, 3) * 2 - 1}
    loss, loss_dict = m.shared_step(batch)
    assert loss.requires_grad and set(loss_dict) == {"train/loss_simple", "train/loss_vlb", "train/loss"}
    before = int(m.model_ema.num_updates)

    def closure():
        opts[0].zero_grad()
        step_loss = m.shared_step(batch)[0]
        step_loss.backward()
        return step_loss

    m.optimizer_step(0, 0, opts[0], closure)  # the EMA follows each optimizer step
    assert int(m.model_ema.num_updates) == before + 1
    plain = tiny_ddpm(use_ema=False)
    assert isinstance(plain.configure_optimizers(), torch.optim.AdamW)


def test_sample_shapes_and_intermediates():
    m = tiny_ddpm(use_ema=False)
    torch.manual_seed(0)
    samples, intermediates = m.sample(batch_size=2, return_intermediates=True)
    assert samples.shape == (2, 3, 8, 8) and torch.isfinite(samples).all()
    # the initial noise, then t = 19 (first step) and t = 15, 10, 5, 0 (every log_every_t)
    assert len(intermediates) == 6


def test_init_from_ckpt_with_ignore_keys(tmp_path):
    src = tiny_ddpm(use_ema=False)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": src.state_dict()}, path)
    fresh = tiny_ddpm(use_ema=False)
    fresh.init_from_ckpt(str(path), ignore_keys=("model.diffusion_model.input_blocks.0.",))
    src_sd, fresh_sd = src.state_dict(), fresh.state_dict()
    assert torch.equal(fresh_sd["model.diffusion_model.time_embed.0.weight"],
                       src_sd["model.diffusion_model.time_embed.0.weight"])
    assert not torch.equal(fresh_sd["model.diffusion_model.input_blocks.0.0.weight"],
                           src_sd["model.diffusion_model.input_blocks.0.0.weight"])  # skipped: own init kept
    via_ctor = tiny_ddpm(use_ema=False, ckpt_path=str(path))
    assert torch.equal(via_ctor.state_dict()["model.diffusion_model.input_blocks.0.0.weight"],
                       src_sd["model.diffusion_model.input_blocks.0.0.weight"])
