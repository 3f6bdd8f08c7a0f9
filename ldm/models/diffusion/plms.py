"""PLMS sampler: "Pseudo Numerical Methods for Diffusion Models on Manifolds" (Liu et al., ICLR 2022).

The DDIM update (Song et al., ICLR 2021) driven by a linear multistep estimate of the noise: a
pseudo improved-Euler first step, then Adams-Bashforth of order 2, 3 and 4 over the previous
predictions. Deterministic: eta must be 0.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from ldm.models.diffusion.sampling_common import DDIMScheduleSampler


class PLMSSampler(DDIMScheduleSampler):
    """PLMS (Liu et al. 2022, eq. 12 with the pseudo Adams-Bashforth estimates) on the DDIM schedule."""

    sampler_name = "PLMS"

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0,
                      verbose: bool = True) -> None:
        if ddim_eta != 0:
            raise ValueError(f"PLMS is deterministic: ddim_eta must be 0; got {ddim_eta!r}")
        super().make_schedule(ddim_num_steps, ddim_discretize=ddim_discretize, ddim_eta=ddim_eta, verbose=verbose)

    @torch.no_grad()
    def plms_sampling(self, cond: Any, shape: Sequence[int], x_T: torch.Tensor | None = None,
                      ddim_use_original_steps: bool = False, callback: Callable | None = None,
                      timesteps: int | np.ndarray | None = None, quantize_denoised: bool = False,
                      mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                      img_callback: Callable | None = None, log_every_t: int = 100, temperature: float = 1.0,
                      noise_dropout: float = 0.0, score_corrector: Any = None, corrector_kwargs: dict | None = None,
                      unconditional_guidance_scale: float = 1.0, unconditional_conditioning: Any = None,
                      verbose: bool = True):
        """The PLMS loop from x_T (fresh noise when None); returns (x_0, intermediates)."""
        old_eps: list[torch.Tensor] = []

        def step(img, ts, index, i, time_range):
            ts_next = torch.full_like(ts, int(time_range[min(i + 1, len(time_range) - 1)]))
            img, pred_x0, e_t = self.p_sample_plms(
                img, cond, ts, index=index, use_original_steps=ddim_use_original_steps,
                quantize_denoised=quantize_denoised, temperature=temperature, noise_dropout=noise_dropout,
                score_corrector=score_corrector, corrector_kwargs=corrector_kwargs,
                unconditional_guidance_scale=unconditional_guidance_scale,
                unconditional_conditioning=unconditional_conditioning, old_eps=old_eps, t_next=ts_next)
            old_eps.append(e_t)
            if len(old_eps) >= 4:
                old_eps.pop(0)
            return img, pred_x0

        return self._run_loop(shape, step, x_T=x_T, ddim_use_original_steps=ddim_use_original_steps,
                              callback=callback, timesteps=timesteps, mask=mask, x0=x0, img_callback=img_callback,
                              log_every_t=log_every_t, verbose=verbose)

    sampling_loop = plms_sampling

    @torch.no_grad()
    def p_sample_plms(self, x: torch.Tensor, c: Any, t: torch.Tensor, index: int, repeat_noise: bool = False,
                      use_original_steps: bool = False, quantize_denoised: bool = False, temperature: float = 1.0,
                      noise_dropout: float = 0.0, score_corrector: Any = None, corrector_kwargs: dict | None = None,
                      unconditional_guidance_scale: float = 1.0, unconditional_conditioning: Any = None,
                      old_eps: Sequence[torch.Tensor] | None = None, t_next: torch.Tensor | None = None):
        """One PLMS step; returns (x_{t-1}, predicted x_0, this step's raw eps)."""
        old_eps = list(old_eps or ())

        def model_output(x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
            return self.get_model_output(x_in, t_in, c, unconditional_guidance_scale=unconditional_guidance_scale,
                                         unconditional_conditioning=unconditional_conditioning,
                                         score_corrector=score_corrector, corrector_kwargs=corrector_kwargs)

        def ddim_step(e: torch.Tensor):
            return self.x_prev_and_pred_x0(x, e, index, use_original_steps=use_original_steps,
                                           quantize_denoised=quantize_denoised, temperature=temperature,
                                           noise_dropout=noise_dropout, repeat_noise=repeat_noise)

        e_t = model_output(x, t)
        if len(old_eps) == 0:  # pseudo improved Euler (2nd order)
            if t_next is None:
                raise ValueError("the first PLMS step needs t_next; got None")
            x_prev, _ = ddim_step(e_t)
            e_t_prime = (e_t + model_output(x_prev, t_next)) / 2
        elif len(old_eps) == 1:  # 2nd-order pseudo linear multistep (Adams-Bashforth)
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:  # 3rd order
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:  # 4th order
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24

        x_prev, pred_x0 = ddim_step(e_t_prime)
        return x_prev, pred_x0, e_t
