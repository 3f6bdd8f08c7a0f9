"""DPM-Solver++ for the discrete-time (VP) diffusion models of this codebase.

Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models" (arXiv:2211.01095): the multistep second-order solver in data-prediction form,
DPM-Solver++(2M) (Algorithm 2; the ``dpmpp`` step of `ldm.models.diffusion.sampling`), on a grid of
the model's integer training steps from T - 1 down to 0, so that the model is evaluated only at the
steps it was trained on. By default the steps are spread evenly in the half log-SNR lambda
("logSNR", the reference code's choice for latents); "time_quadratic" and "time_uniform" are there
too. On a discrete schedule lambda climbs steeply over the last few training steps: an evenly spaced
grid in t leaves one long final step there, which costs the second-order update its accuracy.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ldm.models.diffusion.denoiser import DiscreteSchedule, integer_grid
from ldm.models.diffusion.sampling import Sampler

#: Below this many steps the final step is first order when ``lower_order_final`` (the reference code's rule).
LOWER_ORDER_FINAL_BELOW = 10
#: Ways to place the solver's steps between T-1 and 0 (the reference code's ``skip_type`` values).
SKIP_TYPES = ("logSNR", "time_quadratic", "time_uniform")
#: The schedule of the solver (alpha, sigma and lambda of every training step).
NoiseScheduleVP = DiscreteSchedule


def solver_timesteps(lambdas: torch.Tensor, steps: int, skip_type: str = "logSNR") -> list[int]:
    """``steps + 1`` strictly decreasing integer training steps from T-1 down to 0 (see `integer_grid`)."""
    T = int(lambdas.shape[0])
    if skip_type not in SKIP_TYPES:
        raise ValueError(f"skip_type must be one of {', '.join(SKIP_TYPES)}; got {skip_type!r}")
    if not 1 <= steps <= T - 1:
        raise ValueError(f"steps must be in [1, {T - 1}] for a model with {T} training steps; got {steps}")
    return check_timesteps(integer_grid(lambdas, steps, skip_type), T)


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


class DPMSolverSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) with the ``DDIMSampler.sample`` interface."""

    name = "dpmpp2m"

    def __init__(self, model: torch.nn.Module, order: int = 2, lower_order_final: bool = False,
                 skip_type: str = "logSNR", name: str | None = None):
        if order not in (1, 2):
            raise ValueError(f"order must be 1 (DDIM) or 2 (DPM-Solver++(2M)); got {order}")
        if skip_type not in SKIP_TYPES:
            raise ValueError(f"skip_type must be one of {', '.join(SKIP_TYPES)}; got {skip_type!r}")
        super().__init__(model, name)
        self.order = order  # 2: multistep second order; 1: the first-order update, i.e. DDIM
        self.lower_order_final = lower_order_final  # first-order last step when fewer than 10 steps (less accurate)
        self.skip_type = skip_type  # how the S steps are spread over the training steps
        self.schedule = NoiseScheduleVP(model.alphas_cumprod)

    def make_timesteps(self, S: int) -> list[int]:
        """The solver grid of ``S`` steps (see :func:`solver_timesteps`)."""
        return solver_timesteps(self.schedule.lambda_, int(S), self.skip_type)

    def sigmas(self, S: int | None) -> list[float]:
        if S is None:
            raise ValueError("give the number of steps S or an explicit timesteps grid")
        return self.schedule.sigmas[self.make_timesteps(S)].tolist()

    def options(self, eta: float, n: int) -> dict:
        return {"order": self.order, "lower_order_final": self.lower_order_final and n < LOWER_ORDER_FINAL_BELOW}

    @torch.no_grad()
    def sample(self, S: int | None, *args: Any, timesteps: Sequence[int] | None = None, **kwargs: Any):
        """Solve the probability-flow ODE from x_T in ``S`` steps or along ``timesteps``; returns (x, intermediates)."""
        if timesteps is not None:
            grid = check_timesteps(timesteps, self.schedule.num_timesteps)
            if S is not None and int(S) != len(grid) - 1:
                raise ValueError(f"S={S} disagrees with the {len(grid) - 1} steps of the given timesteps")
            kwargs["sigmas"] = self.schedule.sigmas[grid].tolist()
        return super().sample(S, *args, **kwargs)
