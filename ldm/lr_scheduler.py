"""Learning-rate multipliers for `torch.optim.lr_scheduler.LambdaLR`.

The schedules of the latent-diffusion training configs (Rombach et al., CVPR 2022): a linear warm-up
followed by a cosine decay (Loshchilov & Hutter, "SGDR", ICLR 2017) or by a linear ramp, optionally in
repeated cycles. Each object is a callable ``step -> multiplier``; use it with a base learning rate
whose product with the multiplier gives the wanted rate (``LambdaLR(opt, lr_lambda=sched.schedule)``).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)


class LambdaWarmUpCosineScheduler:
    """One cycle: linear warm-up from ``lr_start`` to ``lr_max``, then cosine decay to ``lr_min``.

    Use with a base learning rate of 1.0 when the values are absolute rates.
    """

    def __init__(
        self,
        warm_up_steps: int,  # steps of the linear warm-up
        lr_min: float,  # multiplier reached at the end of the cosine decay
        lr_max: float,  # multiplier at the end of the warm-up
        lr_start: float,  # multiplier at step 0
        max_decay_steps: int,  # step at which the decay ends (counted from step 0, warm-up included)
        verbosity_interval: int = 0,  # log the multiplier every this many steps; 0 = never
    ) -> None:
        if max_decay_steps <= warm_up_steps:
            raise ValueError(f"max_decay_steps must be larger than warm_up_steps; got max_decay_steps="
                             f"{max_decay_steps!r}, warm_up_steps={warm_up_steps!r}")
        self.lr_warm_up_steps = warm_up_steps
        self.lr_start = lr_start
        self.lr_min = lr_min
        self.lr_max = lr_max
        self.lr_max_decay_steps = max_decay_steps
        self.last_lr = 0.0
        self.verbosity_interval = verbosity_interval

    def schedule(self, n: int, **kwargs) -> float:
        if self.verbosity_interval > 0 and n % self.verbosity_interval == 0:
            logger.info("current step: %d, recent lr-multiplier: %s", n, self.last_lr)
        if n < self.lr_warm_up_steps:
            lr = (self.lr_max - self.lr_start) / self.lr_warm_up_steps * n + self.lr_start
        else:
            t = (n - self.lr_warm_up_steps) / (self.lr_max_decay_steps - self.lr_warm_up_steps)
            t = min(t, 1.0)
            lr = self.lr_min + 0.5 * (self.lr_max - self.lr_min) * (1 + np.cos(t * np.pi))
        self.last_lr = lr
        return lr

    def __call__(self, n: int, **kwargs) -> float:
        return self.schedule(n, **kwargs)


class LambdaWarmUpCosineScheduler2:
    """Repeated cycles, each a linear warm-up from ``f_start`` to ``f_max`` then a cosine decay to ``f_min``.

    Every argument but ``verbosity_interval`` is a list with one entry per cycle. Steps past the end of
    the last cycle stay in the last cycle. Use with a base learning rate of 1.0 for absolute values.
    """

    def __init__(
        self,
        warm_up_steps: Sequence[int],  # warm-up length of each cycle
        f_min: Sequence[float],  # multiplier at the end of each cycle
        f_max: Sequence[float],  # multiplier at the end of each warm-up
        f_start: Sequence[float],  # multiplier at the start of each cycle
        cycle_lengths: Sequence[int],  # length of each cycle in steps
        verbosity_interval: int = 0,  # log the multiplier every this many steps; 0 = never
    ) -> None:
        lengths = {"warm_up_steps": len(warm_up_steps), "f_min": len(f_min), "f_max": len(f_max),
                   "f_start": len(f_start), "cycle_lengths": len(cycle_lengths)}
        if len(set(lengths.values())) != 1 or lengths["cycle_lengths"] == 0:
            raise ValueError(f"warm_up_steps, f_min, f_max, f_start and cycle_lengths must be non-empty lists of "
                             f"one length (one entry per cycle); got lengths {lengths}")
        self.lr_warm_up_steps = list(warm_up_steps)
        self.f_start = list(f_start)
        self.f_min = list(f_min)
        self.f_max = list(f_max)
        self.cycle_lengths = list(cycle_lengths)
        self.cum_cycles = np.cumsum([0] + list(self.cycle_lengths))
        self.last_f = 0.0
        self.verbosity_interval = verbosity_interval

    def find_in_interval(self, n: int) -> int:
        """Index of the cycle that step ``n`` falls in (the last one past the end)."""
        for interval, cycle_end in enumerate(self.cum_cycles[1:]):
            if n <= cycle_end:
                return interval
        return len(self.cycle_lengths) - 1

    def _position(self, n: int) -> tuple[int, int]:
        cycle = self.find_in_interval(n)
        n = n - self.cum_cycles[cycle]
        if self.verbosity_interval > 0 and n % self.verbosity_interval == 0:
            logger.info("current step: %d, recent lr-multiplier: %s, current cycle %d", n, self.last_f, cycle)
        return cycle, n

    def _warm_up(self, cycle: int, n: int) -> float:
        return (self.f_max[cycle] - self.f_start[cycle]) / self.lr_warm_up_steps[cycle] * n + self.f_start[cycle]

    def schedule(self, n: int, **kwargs) -> float:
        cycle, n = self._position(n)
        if n < self.lr_warm_up_steps[cycle]:
            f = self._warm_up(cycle, n)
        else:
            t = (n - self.lr_warm_up_steps[cycle]) / (self.cycle_lengths[cycle] - self.lr_warm_up_steps[cycle])
            t = min(t, 1.0)
            f = self.f_min[cycle] + 0.5 * (self.f_max[cycle] - self.f_min[cycle]) * (1 + np.cos(t * np.pi))
        self.last_f = f
        return f

    def __call__(self, n: int, **kwargs) -> float:
        return self.schedule(n, **kwargs)


class LambdaLinearScheduler(LambdaWarmUpCosineScheduler2):
    """Like `LambdaWarmUpCosineScheduler2`, but after each warm-up the multiplier moves linearly from
    ``f_max`` towards ``f_min``, reaching it at the end of the cycle."""

    def schedule(self, n: int, **kwargs) -> float:
        cycle, n = self._position(n)
        if n < self.lr_warm_up_steps[cycle]:
            f = self._warm_up(cycle, n)
        else:
            f = self.f_min[cycle] + (self.f_max[cycle] - self.f_min[cycle]) * (self.cycle_lengths[cycle] - n) / (
                self.cycle_lengths[cycle])
        self.last_f = f
        return f
