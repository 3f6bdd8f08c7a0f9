"""DDIM sampler: "Denoising Diffusion Implicit Models" (Song et al., ICLR 2021).

Deterministic (eta = 0) or stochastic (eta > 0, eq. 16) sampling on a sub-sequence of the training
timesteps, with classifier-free guidance, inpainting through a mask, and the DDIM forward
(`stochastic_encode`) and reverse (`decode`) maps used for image-to-image editing.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ldm.models.diffusion.sampling_common import DDIMScheduleSampler, logger
from ldm.modules.diffusionmodules.util import extract_into_tensor


class DDIMSampler(DDIMScheduleSampler):
    """DDIM (Song et al. 2021, eq. 12) for a `DDPM` / `LatentDiffusion` model."""

    sampler_name = "DDIM"

    @torch.no_grad()
    def ddim_sampling(self, cond: Any, shape: Sequence[int], x_T: torch.Tensor | None = None,
                      ddim_use_original_steps: bool = False, callback: Callable | None = None,
                      timesteps: int | np.ndarray | None = None, quantize_denoised: bool = False,
                      mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                      img_callback: Callable | None = None, log_every_t: int = 100, temperature: float = 1.0,
                      noise_dropout: float = 0.0, score_corrector: Any = None, corrector_kwargs: dict | None = None,
                      unconditional_guidance_scale: float = 1.0, unconditional_conditioning: Any = None,
                      verbose: bool = True):
        """The DDIM loop from x_T (fresh noise when None); returns (x_0, intermediates)."""
        def step(img, ts, index, i, time_range):
            return self.p_sample_ddim(img, cond, ts, index=index, use_original_steps=ddim_use_original_steps,
                                      quantize_denoised=quantize_denoised, temperature=temperature,
                                      noise_dropout=noise_dropout, score_corrector=score_corrector,
                                      corrector_kwargs=corrector_kwargs,
                                      unconditional_guidance_scale=unconditional_guidance_scale,
                                      unconditional_conditioning=unconditional_conditioning)

        return self._run_loop(shape, step, x_T=x_T, ddim_use_original_steps=ddim_use_original_steps,
                              callback=callback, timesteps=timesteps, mask=mask, x0=x0, img_callback=img_callback,
                              log_every_t=log_every_t, verbose=verbose)

    sampling_loop = ddim_sampling

    @torch.no_grad()
    def p_sample_ddim(self, x: torch.Tensor, c: Any, t: torch.Tensor, index: int, repeat_noise: bool = False,
                      use_original_steps: bool = False, quantize_denoised: bool = False, temperature: float = 1.0,
                      noise_dropout: float = 0.0, score_corrector: Any = None, corrector_kwargs: dict | None = None,
                      unconditional_guidance_scale: float = 1.0, unconditional_conditioning: Any = None):
        """One DDIM step x_t -> x_{t-1}; returns (x_{t-1}, predicted x_0)."""
        e_t = self.get_model_output(x, t, c, unconditional_guidance_scale=unconditional_guidance_scale,
                                    unconditional_conditioning=unconditional_conditioning,
                                    score_corrector=score_corrector, corrector_kwargs=corrector_kwargs)
        return self.x_prev_and_pred_x0(x, e_t, index, use_original_steps=use_original_steps,
                                       quantize_denoised=quantize_denoised, temperature=temperature,
                                       noise_dropout=noise_dropout, repeat_noise=repeat_noise)

    @torch.no_grad()
    def stochastic_encode(self, x0: torch.Tensor, t: torch.Tensor, use_original_steps: bool = False,
                          noise: torch.Tensor | None = None) -> torch.Tensor:
        """Noise x_0 to DDIM step index ``t`` in one go (fast, but not an exact inversion)."""
        if use_original_steps:
            sqrt_alphas_cumprod = self.sqrt_alphas_cumprod
            sqrt_one_minus_alphas_cumprod = self.sqrt_one_minus_alphas_cumprod
        else:
            sqrt_alphas_cumprod = torch.sqrt(self.ddim_alphas)
            sqrt_one_minus_alphas_cumprod = self.ddim_sqrt_one_minus_alphas
        if noise is None:
            noise = torch.randn_like(x0)
        t = t.to(sqrt_alphas_cumprod.device)
        return (extract_into_tensor(sqrt_alphas_cumprod, t, x0.shape) * x0
                + extract_into_tensor(sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)

    @torch.no_grad()
    def decode(self, x_latent: torch.Tensor, cond: Any, t_start: int, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None, use_original_steps: bool = False,
               verbose: bool = True) -> torch.Tensor:
        """Run DDIM from step index ``t_start`` (as given to `stochastic_encode`) down to x_0."""
        timesteps = np.arange(self.ddpm_num_timesteps) if use_original_steps else self.ddim_timesteps
        timesteps = timesteps[:t_start]
        time_range = np.flip(timesteps)
        total_steps = timesteps.shape[0]
        logger.info("Running DDIM Sampling with %d timesteps", total_steps)

        x_dec = x_latent
        for i, step in enumerate(tqdm(time_range, desc="Decoding image", total=total_steps, disable=not verbose)):
            index = total_steps - i - 1
            ts = torch.full((x_latent.shape[0],), int(step), device=x_latent.device, dtype=torch.long)
            x_dec, _ = self.p_sample_ddim(x_dec, cond, ts, index=index, use_original_steps=use_original_steps,
                                          unconditional_guidance_scale=unconditional_guidance_scale,
                                          unconditional_conditioning=unconditional_conditioning)
        return x_dec
