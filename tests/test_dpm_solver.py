"""DPM-Solver++ (Lu et al. 2022) and the sampler registry, checked on models whose optimal denoiser is
known in closed form: data that is a single point (the solver must be exact) or a Gaussian (the
probability-flow ODE maps quantiles, so the exact endpoint is known; the solver must converge to it
at second order).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ldm.models.diffusion.denoiser import DiscreteSchedule
from ldm.models.diffusion.gaussian_diffusion import GaussianDiffusion
from ldm.models.diffusion.dpm_solver import SKIP_TYPES, DPMSolverSampler
from ldm.models.diffusion.sampling import (DDPMSampler, check_sampler_options, dpmpp, make_sampler,
                                           resolve_sampler_name, sample)


def ldm_linear_alphas_cumprod(T: int = 1000) -> torch.Tensor:
    """The "linear" schedule of the LDM configs (linear in sqrt(beta)), float64."""
    betas = torch.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


class GaussianData(torch.nn.Module):
    """The exact eps- (or x0-) prediction for data ~ N(mu, std^2 I); mu may depend on the conditioning."""

    def __init__(self, mu: torch.Tensor, std: float, T: int = 1000, parameterization: str = "eps"):
        super().__init__()
        self.register_buffer("alphas_cumprod", ldm_linear_alphas_cumprod(T))
        self.mu, self.std, self.parameterization = mu, std, parameterization
        self.calls: list[int] = []  # batch size of every forward

    @property
    def diffusion(self) -> GaussianDiffusion:
        return GaussianDiffusion.from_alphas_cumprod(self.alphas_cumprod, parameterization=self.parameterization)

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        self.calls.append(x.shape[0])
        ac = self.alphas_cumprod[t].view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        mu = self.mu if cond is None else cond
        var = ac * self.std ** 2 + (1 - ac)
        if self.parameterization == "x0":  # E[x0 | x_t]
            return mu + ac.sqrt() * self.std ** 2 * (x - ac.sqrt() * mu) / var
        return (1 - ac).sqrt() * (x - ac.sqrt() * mu) / var

    def exact(self, x_T: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """The probability-flow ODE solution from step ``start`` to ``end``: the same quantile."""
        a0, a1 = self.alphas_cumprod[start], self.alphas_cumprod[end]
        s0 = (a0 * self.std ** 2 + 1 - a0).sqrt()
        s1 = (a1 * self.std ** 2 + 1 - a1).sqrt()
        return a1.sqrt() * self.mu + s1 * (x_T - a0.sqrt() * self.mu) / s0


@pytest.fixture
def mu() -> torch.Tensor:
    return torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def x_T(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def solve(model, S: int, order: int = 2, skip_type: str = "time_quadratic", **kwargs) -> torch.Tensor:
    sampler = DPMSolverSampler(model, order=order, skip_type=skip_type)
    out, _ = sampler.sample(S, 3, (2, 4, 4), x_T=x_T(), verbose=False, **kwargs)
    return out


@pytest.mark.parametrize("skip_type", SKIP_TYPES)
@pytest.mark.parametrize("order", [1, 2])
def test_point_mass_is_solved_exactly(mu, order, skip_type):
    model = GaussianData(mu, std=0.0)
    exact = model.exact(x_T(), 999, 0)
    for S in (1, 3, 12, 50):
        assert (solve(model, S, order, skip_type) - exact).abs().max() < 1e-10


def test_gaussian_converges_at_second_order(mu):
    model = GaussianData(mu, std=1.0)
    exact = model.exact(x_T(), 999, 0)
    err2 = [(solve(model, S) - exact).abs().max().item() for S in (10, 20, 40)]
    err1 = [(solve(model, S, order=1) - exact).abs().max().item() for S in (10, 20, 40)]
    assert err2[0] / err2[1] > 3.0 and err2[1] / err2[2] > 3.0  # halving h: error / 4
    assert 1.6 < err1[0] / err1[1] < 2.5 and 1.6 < err1[1] / err1[2] < 2.5  # first order (DDIM): error / 2
    assert err2[1] < err1[1] / 5
    assert err2[2] < 5e-3


def test_x0_parameterization_gives_the_same_solution(mu):
    eps_model = GaussianData(mu, std=0.7)
    x0_model = GaussianData(mu, std=0.7, parameterization="x0")
    assert torch.allclose(solve(eps_model, 15), solve(x0_model, 15), atol=1e-10)


@pytest.mark.parametrize("skip_type", SKIP_TYPES)
def test_solver_grids(skip_type):
    schedule = DiscreteSchedule(ldm_linear_alphas_cumprod(1000))
    for S in (1, 2, 7, 20, 100, 999):
        grid = [schedule.t(s) for s in schedule.grid(S, skip_type).tolist()]
        assert all(t.is_integer() for t in grid) and len(grid) == S + 1 and grid[0] == 999 and grid[-1] == 0
        assert all(a > b for a, b in zip(grid, grid[1:]))
    with pytest.raises(ValueError, match=r"steps must be in \[1, 999\]"):
        schedule.grid(1000, skip_type)
    with pytest.raises(ValueError, match="skip_type must be one of"):
        DPMSolverSampler(GaussianData(torch.zeros(2, 4, 4), 1.0), skip_type="karras")


def test_classifier_free_guidance_is_one_batched_forward(mu):
    model = GaussianData(mu, std=1.0)
    cond = torch.full((3, 2, 4, 4), 0.5, dtype=torch.float64)
    uncond = torch.zeros_like(cond)
    out = solve(model, 8, conditioning=cond, unconditional_conditioning=uncond, unconditional_guidance_scale=3.0)
    assert model.calls == [6] * 8  # one forward per step over cat([uncond, cond])

    class Combined(GaussianData):  # the guided prediction as a single model
        def apply_model(self, x, t, c):
            return (GaussianData.apply_model(self, x, t, uncond)
                    + 3.0 * (GaussianData.apply_model(self, x, t, cond) - GaussianData.apply_model(self, x, t, uncond)))

    assert torch.allclose(out, solve(Combined(mu, std=1.0), 8), atol=1e-12)
    t = torch.full((3,), 500)
    assert torch.equal(model.diffusion.denoiser(model.apply_model, cond, uncond, 1.0).model_output(x_T(), t), model.apply_model(x_T(), t, cond))


def test_options_the_solver_does_not_take_raise(mu):
    model = GaussianData(mu, std=1.0)
    sampler = DPMSolverSampler(model)
    with pytest.raises(ValueError, match="takes eta=0 only; got eta=0.5"):
        sampler.sample(5, 1, (2, 4, 4), eta=0.5, verbose=False)
    with pytest.raises(ValueError, match="does not support temperature=0.5"):
        sampler.sample(5, 1, (2, 4, 4), temperature=0.5, verbose=False)
    with pytest.raises(ValueError, match="mask given without x0"):
        sampler.sample(5, 1, (2, 4, 4), mask=torch.ones(1, 1, 4, 4), verbose=False)
    with pytest.raises(ValueError, match="order must be 1 .* or 2"):
        DPMSolverSampler(model, order=3)


def test_intermediates_and_callbacks(mu):
    model = GaussianData(mu, std=1.0)
    seen = []
    out, inter = DPMSolverSampler(model).sample(6, 3, (2, 4, 4), x_T=x_T(), verbose=False, log_every_t=2,
                                                callback=seen.append)
    assert seen == list(range(6))
    assert len(inter["x_inter"]) == len(inter["pred_x0"]) == 1 + 3 + 1  # x_T, steps 0, 2, 4, and the last
    assert torch.equal(inter["x_inter"][-1], out)


# ------------------------------------------------------------------------------------------------
# against the project's DDIM and DDPM on a small LDM
# ------------------------------------------------------------------------------------------------


def test_first_order_solver_is_ddim(tiny_cin_ldm):
    from ldm.models.diffusion.ddim import DDIMSampler

    model = tiny_cin_ldm
    c = model.get_learned_conditioning({"class_label": torch.tensor([3, 5])})
    uc = model.get_learned_conditioning({"class_label": torch.tensor([1000, 1000])})
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    kwargs = dict(conditioning=c, x_T=noise, verbose=False, unconditional_guidance_scale=2.0,
                  unconditional_conditioning=uc)
    ddim, _ = DDIMSampler(model).sample(5, 2, (3, 8, 8), eta=0.0, **kwargs)
    # DDIM's 5 steps on 20 training steps: 17 -> 13 -> 9 -> 5 -> 1 -> 0
    sigmas = DiscreteSchedule(model.alphas_cumprod).sigmas[[17, 13, 9, 5, 1, 0]].tolist()
    ours, _ = DPMSolverSampler(model, order=1).sample(None, 2, (3, 8, 8), sigmas=sigmas, **kwargs)
    assert torch.allclose(ours, ddim, atol=1e-5, rtol=1e-5)
    second, _ = DPMSolverSampler(model).sample(5, 2, (3, 8, 8), **kwargs)
    assert second.shape == ddim.shape and torch.isfinite(second).all()


def test_ddpm_sampler_guidance(tiny_cin_ldm):
    model = tiny_cin_ldm
    c = model.get_learned_conditioning({"class_label": torch.tensor([3, 5])})
    uc = model.get_learned_conditioning({"class_label": torch.tensor([1000, 1000])})
    sampler = DDPMSampler(model)
    torch.manual_seed(5)
    plain, _ = sampler.sample(None, 2, (3, 8, 8), conditioning=c, verbose=False)
    torch.manual_seed(5)
    scale_one, _ = sampler.sample(20, 2, (3, 8, 8), conditioning=c, unconditional_conditioning=uc,
                                  unconditional_guidance_scale=1.0, verbose=False)
    torch.manual_seed(5)
    guided, _ = sampler.sample(None, 2, (3, 8, 8), conditioning=c, unconditional_conditioning=uc,
                               unconditional_guidance_scale=4.0, verbose=False)
    assert torch.equal(plain, scale_one) and not torch.allclose(plain, guided)
    with pytest.raises(ValueError, match="runs all 20 training steps"):
        sampler.sample(10, 2, (3, 8, 8), conditioning=c, verbose=False)


def test_sampler_registry(tiny_cin_ldm):
    assert resolve_sampler_name("DPM_Solver++") == "dpmpp2m"
    assert [type(make_sampler(n, tiny_cin_ldm)).__name__ for n in ("ddpm", "ddim", "plms", "dpmpp2m")] == [
        "DDPMSampler", "DDIMSampler", "PLMSSampler", "DPMSolverSampler"]
    with pytest.raises(ValueError, match="unknown sampler 'heun'; allowed: ddpm, ddim, plms, dpmpp2m, dpm_solver"):
        resolve_sampler_name("heun")
    with pytest.raises(ValueError, match="deterministic and takes eta=0 only"):
        check_sampler_options("plms", eta=1.0)
    assert check_sampler_options("ddim", eta=1.0) == "ddim"
    assert np.isfinite(DiscreteSchedule(tiny_cin_ldm.alphas_cumprod).lambda_.numpy()).all()


def test_noise_prediction_multistep(mu):
    """Multistep DPM-Solver on the predicted noise: its first order is DDIM, its third order converges so."""
    model = GaussianData(mu, std=1.0)
    denoiser = model.diffusion.denoiser(model.apply_model)

    def run(S: int, **options) -> torch.Tensor:
        sigmas = denoiser.schedule.grid(S, "logSNR").tolist()
        x = sample(dpmpp, denoiser, x_T() * math.sqrt(1 + sigmas[0] ** 2), sigmas, **options)
        return x / math.sqrt(1 + sigmas[-1] ** 2)

    assert torch.allclose(run(10, order=1, predict="eps"), run(10, order=1), atol=1e-12)
    exact = model.exact(x_T(), 999, 0)
    err = [(run(S, order=3, predict="eps") - exact).abs().max().item() for S in (15, 30, 60)]
    assert err[0] / err[1] > 6 and err[1] / err[2] > 6, err  # halving h: error / 8
