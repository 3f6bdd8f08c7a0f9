"""The diffusion process on its own: no network, no Lightning. Noising, the loss with its target chosen by the
parameterization, the denoiser, and how `DDPM` / `LatentDiffusion` hand their work to it."""
from __future__ import annotations

import copy
import inspect
import subprocess
import sys

import pytest
import torch

from ldm.models.diffusion.ddpm import DDPM, LatentDiffusion, Layout2ImgDiffusion
from ldm.models.diffusion.gaussian_diffusion import SCHEDULE_BUFFERS, GaussianDiffusion, schedule_buffers
from ldm.modules.diffusionmodules.util import make_beta_schedule

pytestmark = pytest.mark.usefixtures("one_thread")

BETAS = make_beta_schedule("linear", 20, linear_start=0.0015, linear_end=0.0195)


def process(**kwargs) -> GaussianDiffusion:
    return GaussianDiffusion.from_betas(BETAS, **kwargs)


def test_the_process_module_imports_no_lightning():
    code = ("import sys; import ldm.models.diffusion.gaussian_diffusion, ldm.models.diffusion.denoiser; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning', "
            "'lightning_fabric')]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("cls, most", [(DDPM, 1), (LatentDiffusion, 2), (Layout2ImgDiffusion, 3)])
def test_the_models_inherit_from_few_project_classes(cls, most):
    project = [c for c in inspect.getmro(cls) if c.__module__.startswith("ldm.")]
    assert len(project) <= most, project


def test_q_sample_is_the_closed_form():
    p = process()
    x0, noise, t = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([0, 7, 19])
    ac = p.alphas_cumprod[t].view(3, 1, 1, 1)
    assert torch.allclose(p.q_sample(x0, t, noise), ac.sqrt() * x0 + (1 - ac).sqrt() * noise, atol=1e-6)
    assert torch.allclose(p.predict_start_from_noise(p.q_sample(x0, t, noise), t, noise), x0, atol=1e-4)


def test_posterior_mean_interpolates_x0_and_xt():
    p = process()
    x0, xt, t = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2), torch.tensor([5, 5])
    mean, var, _ = p.q_posterior(x0, xt, t)
    ab, ab_prev, beta = p.alphas_cumprod[5], p.alphas_cumprod_prev[5], p.betas[5]
    expected = (ab_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - ab_prev) * xt) / (1 - ab)
    assert torch.allclose(mean, expected, atol=1e-6)
    assert torch.allclose(var, torch.full_like(var, float((1 - ab_prev) / (1 - ab) * beta)), atol=1e-8)


@pytest.mark.parametrize("parameterization", ["eps", "x0"])
@pytest.mark.parametrize("loss_type", ["l1", "l2"])
def test_training_loss_targets_the_parameterization(parameterization, loss_type):
    p = process(parameterization=parameterization, loss_type=loss_type, original_elbo_weight=0.5)
    x0, noise, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([3, 11])
    seen = {}

    def network(x_t, steps):
        seen["x_t"], seen["t"] = x_t, steps
        return torch.zeros_like(x_t)

    loss, logs = p.training_losses(network, x0, t, noise)
    assert torch.equal(seen["x_t"], p.q_sample(x0, t, noise)) and torch.equal(seen["t"], t)
    target = noise if parameterization == "eps" else x0
    per_sample = (target.abs() if loss_type == "l1" else target ** 2).mean(dim=[1, 2, 3])
    assert torch.allclose(logs["train/loss_simple"], per_sample.mean())
    assert torch.allclose(logs["train/loss_vlb"], (p.lvlb_weights[t] * per_sample).mean())
    assert torch.allclose(loss, per_sample.mean() + 0.5 * logs["train/loss_vlb"])


def test_training_loss_with_a_per_step_log_variance():
    p = process()
    x0, noise, t = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2), torch.tensor([1, 2])
    logvar = torch.linspace(-1.0, 1.0, 20)
    loss, logs = p.training_losses(lambda x, s: torch.zeros_like(x), x0, t, noise, logvar=logvar, log_logvar=True,
                                   prefix="val")
    per_sample = (noise ** 2).mean(dim=[1, 2, 3])
    assert torch.allclose(logs["val/loss_gamma"], (per_sample / logvar[t].exp() + logvar[t]).mean())
    assert torch.allclose(loss, logs["val/loss_gamma"])  # original_elbo_weight 0
    assert set(logs) == {"val/loss_simple", "val/loss_gamma", "logvar", "val/loss_vlb", "val/loss"}


def test_denoiser_turns_either_parameterization_into_x0():
    x0 = torch.randn(2, 3, 4, 4)
    eps_model, x0_model = process(), process(parameterization="x0")
    sigma = float(eps_model.denoiser(None).schedule.sigmas[9])
    x_ve = x0 + sigma * torch.randn_like(x0)
    exact_eps = (x_ve - x0) / sigma  # what a perfect eps network outputs, at any scale of its input
    d_eps = eps_model.denoiser(lambda x, t, c: exact_eps)(x_ve, sigma)
    d_x0 = x0_model.denoiser(lambda x, t, c: x0)(x_ve, sigma)
    assert torch.allclose(d_eps, x0, atol=1e-5) and torch.equal(d_x0, x0)


def test_the_model_and_its_process_share_the_schedule_buffers():
    unet = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": {"image_size": 8, "in_channels": 3, "out_channels": 3, "model_channels": 32,
                       "attention_resolutions": [], "num_res_blocks": 1, "channel_mult": [1], "num_heads": 1}}
    model = DDPM(unet_config=copy.deepcopy(unet), timesteps=20, image_size=8, channels=3, use_ema=False,
                 linear_start=0.0015, linear_end=0.0195)
    assert all(model.diffusion.__dict__[name] is getattr(model, name) for name in SCHEDULE_BUFFERS)
    for name, value in schedule_buffers(BETAS).items():
        assert torch.equal(getattr(model, name), value), name
    x0, t, noise = torch.randn(2, 3, 8, 8), torch.tensor([4, 9]), torch.randn(2, 3, 8, 8)
    model.train()
    loss, _ = model.p_losses(x0, t, noise=noise)
    expected, _ = model.diffusion.training_losses(model.model, x0, t, noise)
    assert torch.equal(loss, expected)


def test_from_alphas_cumprod_keeps_the_given_tensor():
    ac = torch.cumprod(1.0 - torch.as_tensor(BETAS), 0)  # float64
    p = GaussianDiffusion.from_alphas_cumprod(ac, parameterization="x0")
    assert p.alphas_cumprod is ac and p.num_timesteps == 20 and p.parameterization == "x0"
    assert torch.allclose(p.betas.double(), torch.as_tensor(BETAS), atol=1e-7)


def test_an_incomplete_schedule_is_refused_naming_what_is_missing():
    schedule = schedule_buffers(BETAS)
    del schedule["lvlb_weights"]
    with pytest.raises(ValueError, match="lacks lvlb_weights"):
        GaussianDiffusion(schedule)
    with pytest.raises(ValueError, match="parameterization must be one of eps, x0; got 'v'"):
        process(parameterization="v")
