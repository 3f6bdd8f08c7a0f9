"""The discrete noise schedule and the denoiser every sampler works with.

Samplers see the diffusion in its variance-exploding form (Karras et al. 2022, "Elucidating the Design
Space of Diffusion-Based Generative Models", eq. 1): x = x0 + sigma * eps, with sigma_t =
sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]) for the model's discrete (VP) steps, whose input is
x / sqrt(1 + sigma^2).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from ldm.modules.diffusionmodules.util import make_ddim_timesteps

#: Ways to place a sampler's steps between the first and the last noise level (see `DiscreteSchedule.grid`).
SPACINGS = ("ddim", "logSNR", "time_uniform", "time_quadratic", "log_sigma", "karras", "all")
#: rho of the Karras et al. 2022 grid (eq. 5): the steps gather near the data.
KARRAS_RHO = 7.0


class DiscreteSchedule:
    """The noise levels sigma_t of a discrete VP schedule, read from ``alphas_cumprod`` (float64, on the CPU)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        ac = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)  # (T,)
        if ac.dim() != 1 or not bool(((ac > 0) & (ac < 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-d tensor with values in (0, 1)")
        self.num_timesteps = ac.shape[0]
        self.sigmas = ((1.0 - ac) / ac).sqrt()  # (T,) increasing in t
        self.log_sigmas = self.sigmas.log()
        self.lambda_ = -self.log_sigmas  # the half log-SNR log(alpha_t / sigma_t), decreasing in t

    def t(self, sigma: float) -> float:
        """The (fractional) step of noise level ``sigma``; integer steps come back exactly."""
        t = float(np.interp(math.log(sigma), self.log_sigmas.numpy(), np.arange(self.num_timesteps)))
        return float(round(t)) if abs(t - round(t)) < 1e-6 else t

    def grid(self, steps: int, spacing: str = "logSNR", to_zero: bool = False) -> torch.Tensor:
        """``steps + 1`` decreasing noise levels from sigma_{T-1} to sigma_0 (then 0 when ``to_zero``).

        ``ddim``: the original DDIM steps (every (T // steps)-th step, shifted by one; then step 0);
        ``logSNR``, ``time_uniform``, ``time_quadratic``: integer steps evenly spaced in the half log-SNR
        lambda = -log sigma, in t or in sqrt(t) (Lu et al. 2022); ``log_sigma``: evenly spaced in lambda,
        not rounded to training steps; ``karras``: Karras et al. 2022, eq. 5 (rho = 7); ``all``: every step.
        """
        T = self.num_timesteps
        if spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}; got {spacing!r}")
        limit = T if spacing == "all" else T - 1
        if not 1 <= steps <= limit:
            raise ValueError(f"steps must be in [1, {limit}] for a model with {T} training steps; got {steps}")
        if spacing == "all":
            sigmas = self.sigmas.flip(0)
        elif spacing == "ddim":
            steps_up = make_ddim_timesteps("uniform", steps, T, verbose=False)
            sigmas = torch.cat([self.sigmas[torch.from_numpy(steps_up[::-1].copy())], self.sigmas[:1]])
        elif spacing == "log_sigma":
            sigmas = torch.linspace(float(self.log_sigmas[-1]), float(self.log_sigmas[0]), steps + 1).exp()
        elif spacing == "karras":
            ends = float(self.sigmas[-1]) ** (1 / KARRAS_RHO), float(self.sigmas[0]) ** (1 / KARRAS_RHO)
            sigmas = torch.linspace(*ends, steps + 1, dtype=torch.float64) ** KARRAS_RHO
        else:
            sigmas = self.sigmas[integer_grid(self.lambda_, steps, spacing)]
        return torch.cat([sigmas, sigmas.new_zeros(1)]) if to_zero else sigmas


def integer_grid(lambdas: torch.Tensor, steps: int, spacing: str) -> list[int]:
    """``steps + 1`` strictly decreasing integer steps from T-1 to 0, evenly spaced in lambda, t or sqrt(t)
    (where rounding would repeat a step, it moves by one)."""
    T = int(lambdas.shape[0])
    if spacing == "time_uniform":
        grid = np.floor(np.linspace(T - 1, 0, steps + 1) + 0.5)  # round half up
    elif spacing == "time_quadratic":
        grid = np.floor(np.linspace(math.sqrt(T - 1), 0, steps + 1) ** 2 + 0.5)
    else:
        lam = lambdas.detach().cpu().double().numpy()
        grid = np.abs(lam[None, :] - np.linspace(lam[-1], lam[0], steps + 1)[:, None]).argmin(axis=1)
    grid = grid.astype(np.int64)
    grid[0], grid[-1] = T - 1, 0
    for i in range(steps - 1, 0, -1):  # strictly decreasing near t = 0
        grid[i] = max(grid[i], grid[i + 1] + 1)
    for i in range(1, steps):  # ... and below T - 1 at the top
        grid[i] = min(grid[i], grid[i - 1] - 1)
    return grid.tolist()


def cat_conditioning(uc: Any, c: Any) -> Any:
    """Batch the unconditional and conditional inputs: tensors, lists of tensors, or dicts of either."""
    if isinstance(c, dict):
        if not isinstance(uc, dict) or set(uc) != set(c):
            raise ValueError(f"unconditional_conditioning must be a dict with the keys of the conditioning "
                             f"{sorted(c)}; got {sorted(uc) if isinstance(uc, dict) else type(uc).__name__}")
        return {k: cat_conditioning(uc[k], c[k]) for k in c}
    if isinstance(c, list):
        return [torch.cat([u, ci]) for u, ci in zip(uc, c)]
    return torch.cat([uc, c])


def batch_size_of(conditioning: Any) -> int | None:
    """The batch size of a conditioning (tensor, list of tensors, or dict of either), None when unknown."""
    c = next(iter(conditioning.values()), None) if isinstance(conditioning, dict) else conditioning
    c = c[0] if isinstance(c, (list, tuple)) and c and isinstance(c[0], torch.Tensor) else c
    return c.shape[0] if isinstance(c, torch.Tensor) else len(c) if isinstance(c, (list, tuple)) else None


class Denoiser:
    """D(x, sigma), the x0 prediction of a network ``network(x_t, t, cond)`` trained on the discrete VP schedule
    ``alphas_cumprod`` to predict ``parameterization`` ("eps" or "x0"), with classifier-free guidance (Ho &
    Salimans 2021) in one batched forward pass: e_u + scale * (e_c - e_u) over ``cat([x, x])``.
    ``score_corrector(out, x_t, t, cond)`` may adjust the guided network output; ``denoised_fn`` maps the x0
    prediction (clamping, quantization).
    """

    def __init__(self, network: Callable, alphas_cumprod: torch.Tensor, parameterization: str = "eps",
                 cond: Any = None, unconditional_conditioning: Any = None, unconditional_guidance_scale: float = 1.0,
                 denoised_fn: Callable | None = None, score_corrector: Callable | None = None):
        if parameterization not in ("eps", "x0"):
            raise ValueError(f"parameterization must be 'eps' or 'x0'; got {parameterization!r}")
        if score_corrector is not None and parameterization != "eps":
            raise ValueError(f"score_corrector needs parameterization 'eps'; got {parameterization!r}")
        self.network, self.parameterization = network, parameterization
        self.schedule = DiscreteSchedule(alphas_cumprod)
        self.cond, self.uc, self.scale = cond, unconditional_conditioning, unconditional_guidance_scale
        self.denoised_fn, self.score_corrector = denoised_fn, score_corrector

    def model_output(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output for VP inputs ``x`` at steps ``t``, with classifier-free guidance."""
        if self.uc is None or self.scale == 1.0:
            out = self.network(x, t, self.cond)
        else:
            e_uncond, e_cond = self.network(torch.cat([x] * 2), torch.cat([t] * 2),
                                            cat_conditioning(self.uc, self.cond)).chunk(2)
            out = e_uncond + self.scale * (e_cond - e_uncond)
        if self.score_corrector is not None:
            out = self.score_corrector(out, x, t, self.cond)
        return out

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The x0 prediction for ``x`` (variance-exploding scale) at noise level ``sigma``."""
        step = self.schedule.t(sigma)
        t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long if step.is_integer() else x.dtype)
        out = self.model_output(x * (1.0 / math.sqrt(1.0 + sigma ** 2)), t)
        denoised = x - sigma * out if self.parameterization == "eps" else out
        return denoised if self.denoised_fn is None else self.denoised_fn(denoised)
