"""DPM-Solver++ for the discrete-time (VP) diffusion models of this codebase.

Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models" (arXiv:2211.01095): the multistep second-order solver in data-prediction form,
DPM-Solver++(2M) (Algorithm 2), with classifier-free guidance.

With alpha_t = sqrt(alphas_cumprod[t]), sigma_t = sqrt(1 - alphas_cumprod[t]) and the half log-SNR
lambda_t = log(alpha_t / sigma_t), one step from s to t (h = lambda_t - lambda_s > 0) is

    x_t = (sigma_t / sigma_s) x_s - alpha_t (exp(-h) - 1) D,

with D = x0(x_s, s) for the first-order step (which is DDIM, Song et al. 2021) and, for the
second-order multistep update with the previous step s' (r = h_prev / h),

    D = (1 + 1 / (2 r)) x0(x_s, s) - 1 / (2 r) x0(x_s', s').

The model is evaluated only at integer training steps (the steps it was trained on), so lambda comes
straight from ``alphas_cumprod`` without interpolation. The grid runs from ``T - 1`` down to 0 in
``S`` steps; the sample returned is x at step 0, where the model is never called. By default the
steps are spread evenly in lambda ("logSNR", the reference code's choice for low resolutions such as
latents); "time_quadratic" and "time_uniform" are there too. On a discrete schedule lambda climbs
steeply over the last few training steps: an evenly spaced grid in t leaves one long final step
there, which costs the second-order update its accuracy (benchmarks/sampler_accuracy.py measures
it). As in the paper's reference code, the last step falls back to first order when fewer than 10
steps are taken ("lower_order_final").
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ldm.models.diffusion.sampling import check_conditioning_batch, guided_model_output, model_device

#: Below this many steps the final step is taken with the first-order update (reference code's rule).
LOWER_ORDER_FINAL_BELOW = 10


#: Ways to place the solver's steps between T-1 and 0 (the reference code's ``skip_type`` values).
SKIP_TYPES = ("logSNR", "time_quadratic", "time_uniform")


def solver_timesteps(lambdas: torch.Tensor, steps: int, skip_type: str = "logSNR") -> list[int]:
    """``steps + 1`` strictly decreasing integer training steps from T-1 down to 0.

    ``time_uniform`` spaces them evenly in t, ``time_quadratic`` evenly in sqrt(t) (denser near the
    data, where the x0 prediction changes fastest), ``logSNR`` evenly in lambda (nearest integer step).
    Where rounding would repeat a step near t = 0, steps are pushed up by one so that none repeats.
    """
    T = int(lambdas.shape[0])
    if skip_type not in SKIP_TYPES:
        raise ValueError(f"skip_type must be one of {', '.join(SKIP_TYPES)}; got {skip_type!r}")
    if not 1 <= steps <= T - 1:
        raise ValueError(f"steps must be in [1, {T - 1}] for a model with {T} training steps; got {steps}")
    if skip_type == "time_uniform":
        grid = np.floor(np.linspace(T - 1, 0, steps + 1) + 0.5)  # round half up
    elif skip_type == "time_quadratic":
        grid = np.floor(np.linspace(math.sqrt(T - 1), 0, steps + 1) ** 2 + 0.5)
    else:
        lam = lambdas.detach().cpu().double().numpy()
        targets = np.linspace(lam[-1], lam[0], steps + 1)
        grid = np.abs(lam[None, :] - targets[:, None]).argmin(axis=1)
    grid = grid.astype(np.int64)
    grid[0], grid[-1] = T - 1, 0
    for i in range(steps - 1, 0, -1):  # keep the grid strictly decreasing near t = 0
        grid[i] = max(grid[i], grid[i + 1] + 1)
    for i in range(1, steps):  # ... and below T - 1 at the top
        grid[i] = min(grid[i], grid[i - 1] - 1)
    return check_timesteps(grid.tolist(), T)


def check_timesteps(timesteps: Sequence[int], num_timesteps: int) -> list[int]:
    """Validate a solver grid: at least two integer steps, strictly decreasing, inside [0, T-1]."""
    steps = [int(t) for t in timesteps]
    if len(steps) < 2:
        raise ValueError(f"timesteps needs at least a start and an end step; got {steps}")
    if any(a <= b for a, b in zip(steps, steps[1:])):
        raise ValueError(f"timesteps must be strictly decreasing; got {steps}")
    if steps[0] > num_timesteps - 1 or steps[-1] < 0:
        raise ValueError(f"timesteps must lie in [0, {num_timesteps - 1}]; got {steps[0]} .. {steps[-1]}")
    return steps


class NoiseScheduleVP:
    """alpha_t, sigma_t and lambda_t of a discrete VP schedule, in float64 for the solver coefficients."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        ac = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)  # (T,) cumulative alphas
        if ac.dim() != 1 or not bool(((ac > 0) & (ac < 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-d tensor with values in (0, 1)")
        self.num_timesteps = ac.shape[0]
        self.alpha = ac.sqrt()  # (T,)
        self.sigma = (1.0 - ac).sqrt()  # (T,)
        self.lambda_ = self.alpha.log() - self.sigma.log()  # (T,) half log-SNR, decreasing in t

    def data_prediction(self, model_output: torch.Tensor, x: torch.Tensor, t: int, parameterization: str) -> torch.Tensor:
        """x0 from the denoiser's output at step ``t`` (eps- or x0-parameterized)."""
        if parameterization == "eps":
            return (x - float(self.sigma[t]) * model_output) / float(self.alpha[t])
        if parameterization == "x0":
            return model_output
        raise ValueError(f"parameterization must be 'eps' or 'x0'; got {parameterization!r}")

    def update(self, x: torch.Tensor, d: torch.Tensor, s: int, t: int, d_prev: torch.Tensor | None = None,
               s_prev: int | None = None) -> torch.Tensor:
        """One DPM-Solver++ step s -> t; second order (2M) when the previous x0 ``d_prev`` at ``s_prev`` is given."""
        lam_s, lam_t = float(self.lambda_[s]), float(self.lambda_[t])
        h = lam_t - lam_s
        if d_prev is None:
            D = d
        else:
            r = (lam_s - float(self.lambda_[s_prev])) / h
            D = (1.0 + 0.5 / r) * d - (0.5 / r) * d_prev
        sigma_ratio = float(self.sigma[t]) / float(self.sigma[s])
        return sigma_ratio * x - float(self.alpha[t]) * math.expm1(-h) * D


class DPMSolverSampler:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) with the ``DDIMSampler.sample`` interface."""

    def __init__(self, model: torch.nn.Module, order: int = 2, lower_order_final: bool = True,
                 skip_type: str = "logSNR"):
        if order not in (1, 2):
            raise ValueError(f"order must be 1 (DDIM) or 2 (DPM-Solver++(2M)); got {order}")
        if skip_type not in SKIP_TYPES:
            raise ValueError(f"skip_type must be one of {', '.join(SKIP_TYPES)}; got {skip_type!r}")
        self.model = model  # DDPM / LatentDiffusion exposing alphas_cumprod and apply_model
        self.order = order  # 2: multistep second order; 1: the first-order update, i.e. DDIM
        self.lower_order_final = lower_order_final  # first-order last step when fewer than 10 steps
        self.skip_type = skip_type  # how the S steps are spread over the training steps
        self.schedule = NoiseScheduleVP(model.alphas_cumprod)

    def make_timesteps(self, S: int) -> list[int]:
        """The solver grid of ``S`` steps (see :func:`solver_timesteps`)."""
        return solver_timesteps(self.schedule.lambda_, int(S), self.skip_type)

    @torch.no_grad()
    def sample(self, S: int | None, batch_size: int, shape: Sequence[int], conditioning: Any = None,
               callback: Callable[[int], None] | None = None, normals_sequence: Any = None,
               img_callback: Callable[[torch.Tensor, int], None] | None = None, quantize_x0: bool = False,
               eta: float = 0.0, mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
               temperature: float = 1.0, noise_dropout: float = 0.0, score_corrector: Any = None,
               corrector_kwargs: dict | None = None, verbose: bool = True, x_T: torch.Tensor | None = None,
               log_every_t: int = 100, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None,
               timesteps: Sequence[int] | None = None) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Solve the probability-flow ODE from x_T in ``S`` steps (or along ``timesteps``); returns (x, intermediates)."""
        self._check_options(eta, normals_sequence, quantize_x0, temperature, noise_dropout, score_corrector,
                            corrector_kwargs, mask, x0)
        if timesteps is None:
            if S is None:
                raise ValueError("give the number of steps S or an explicit timesteps grid")
            grid = self.make_timesteps(S)
        else:
            grid = check_timesteps(timesteps, self.schedule.num_timesteps)
            if S is not None and int(S) != len(grid) - 1:
                raise ValueError(f"S={S} disagrees with the {len(grid) - 1} steps of the given timesteps")
        check_conditioning_batch(conditioning, batch_size)
        device = model_device(self.model)
        img = torch.randn((batch_size, *shape), device=device) if x_T is None else x_T.to(device)
        parameterization = getattr(self.model, "parameterization", "eps")
        n = len(grid) - 1
        intermediates = {"x_inter": [img], "pred_x0": [img]}
        steps = range(n)
        iterator = tqdm(steps, desc=f"DPM-Solver++({self.order}M) Sampler", total=n) if verbose else steps
        d_prev, s_prev = None, None
        for i in iterator:
            s, t = grid[i], grid[i + 1]
            ts = torch.full((batch_size,), s, device=device, dtype=torch.long)
            if mask is not None:  # inpainting by replacement, as the DDIM sampler does before each step
                img = self.model.q_sample(x0, ts) * mask + (1.0 - mask) * img
            out = guided_model_output(self.model, img, ts, conditioning, unconditional_conditioning,
                                      unconditional_guidance_scale)
            d = self.schedule.data_prediction(out, img, s, parameterization)
            second = self.order == 2 and d_prev is not None
            if second and self.lower_order_final and n < LOWER_ORDER_FINAL_BELOW and i == n - 1:
                second = False
            img = self.schedule.update(img, d, s, t, d_prev if second else None, s_prev if second else None)
            d_prev, s_prev = d, s
            if i % log_every_t == 0 or i == n - 1:
                intermediates["x_inter"].append(img)
                intermediates["pred_x0"].append(d)
            if callback is not None:
                callback(i)
            if img_callback is not None:
                img_callback(d, i)
        return img, intermediates

    @staticmethod
    def _check_options(eta: float, normals_sequence: Any, quantize_x0: bool, temperature: float,
                       noise_dropout: float, score_corrector: Any, corrector_kwargs: Any,
                       mask: torch.Tensor | None, x0: torch.Tensor | None) -> None:
        if eta != 0:
            raise ValueError(f"DPM-Solver++ solves the deterministic ODE and takes eta=0 only; got eta={eta}")
        unsupported = {"normals_sequence": (normals_sequence, None), "quantize_x0": (quantize_x0, False),
                       "temperature": (temperature, 1.0), "noise_dropout": (noise_dropout, 0.0),
                       "score_corrector": (score_corrector, None), "corrector_kwargs": (corrector_kwargs, None)}
        for name, (value, default) in unsupported.items():
            if value is not default and value != default:
                raise ValueError(f"DPMSolverSampler does not support {name}={value!r}; leave it at {default!r}")
        if mask is not None and x0 is None:
            raise ValueError("mask given without x0: masked sampling needs the known latent x0")
