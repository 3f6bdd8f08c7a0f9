"""DDIM sampler: "Denoising Diffusion Implicit Models" (Song et al., ICLR 2021), with the original interface:
`make_schedule` and its buffers, and the forward (`stochastic_encode`) and reverse (`decode`) maps of
image-to-image editing; the update is the ``ancestral`` step of `ldm.models.diffusion.sampling`."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ldm.models.diffusion.denoiser import DiscreteSchedule
from ldm.models.diffusion.sampling import Sampler
from ldm.modules.diffusionmodules.util import extract_into_tensor, make_ddim_sampling_parameters, make_ddim_timesteps


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, eq. 12; eq. 16 with eta > 0) for a `DDPM` / `LatentDiffusion` model."""

    name = "ddim"

    def __init__(self, model: torch.nn.Module, schedule: str = "linear", **kwargs: Any) -> None:
        super().__init__(model, kwargs.get("name"))  # ``schedule`` is accepted for compatibility: it is the model's
        self.ddpm_num_timesteps = model.diffusion.num_timesteps
        self.eta = 0.0

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0,
                      verbose: bool = True) -> None:
        """Select ``ddim_num_steps`` timesteps and compute alpha_t, alpha_{t-1}, sigma_t on them (float32 tensors
        on the device of the model's schedule)."""
        if not 0 < ddim_num_steps < self.ddpm_num_timesteps:  # S == T would ask for step T, past the last one
            raise ValueError(f"the number of DDIM steps must be between 1 and {self.ddpm_num_timesteps - 1} "
                             f"(the model has {self.ddpm_num_timesteps} timesteps); got {ddim_num_steps}")
        self.ddim_timesteps = make_ddim_timesteps(ddim_discretize, ddim_num_steps, self.ddpm_num_timesteps,
                                                  verbose=verbose)
        self.eta = ddim_eta
        process = self.model.diffusion
        acp, acp_prev = process.alphas_cumprod.detach().cpu(), process.alphas_cumprod_prev.detach().cpu()
        sigmas, alphas, alphas_prev = make_ddim_sampling_parameters(acp, self.ddim_timesteps, ddim_eta, verbose)
        buffers = {"alphas_cumprod": acp, "sqrt_alphas_cumprod": acp.sqrt(),
                   "sqrt_one_minus_alphas_cumprod": (1.0 - acp).sqrt(), "ddim_sigmas": sigmas, "ddim_alphas": alphas,
                   "ddim_alphas_prev": alphas_prev, "ddim_sqrt_one_minus_alphas": (1.0 - alphas).sqrt(),
                   "ddim_sigmas_for_original_num_steps":
                       ddim_eta * ((1 - acp_prev) / (1 - acp) * (1 - acp / acp_prev)).sqrt()}
        for name, value in buffers.items():
            setattr(self, name, value.detach().to(torch.float32).to(process.alphas_cumprod.device))

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: Any, *args: Any, eta: float = 0.0, verbose: bool = True,
               **kwargs: Any):
        self.make_schedule(ddim_num_steps=S, ddim_eta=eta, verbose=verbose)
        return super().sample(S, batch_size, shape, *args, eta=eta, verbose=verbose, **kwargs)

    @torch.no_grad()
    def stochastic_encode(self, x0: torch.Tensor, t: torch.Tensor, use_original_steps: bool = False,
                          noise: torch.Tensor | None = None) -> torch.Tensor:
        """Noise x_0 to DDIM step index ``t`` in one go (fast, but not an exact inversion)."""
        if use_original_steps:
            signal, noise_level = self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod
        else:
            signal, noise_level = self.ddim_alphas.sqrt(), self.ddim_sqrt_one_minus_alphas
        noise = torch.randn_like(x0) if noise is None else noise
        t = t.to(signal.device)
        return extract_into_tensor(signal, t, x0.shape) * x0 + extract_into_tensor(noise_level, t, x0.shape) * noise

    @torch.no_grad()
    def decode(self, x_latent: torch.Tensor, cond: Any, t_start: int, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None, use_original_steps: bool = False,
               verbose: bool = True) -> torch.Tensor:
        """Run DDIM from step index ``t_start`` (as given to `stochastic_encode`) down to x_0."""
        schedule = DiscreteSchedule(self.model.diffusion.alphas_cumprod)
        steps = np.arange(self.ddpm_num_timesteps) if use_original_steps else self.ddim_timesteps
        end = schedule.sigmas.new_zeros(1) if use_original_steps else schedule.sigmas[:1]  # alphas_cumprod_prev[0]
        sigmas = torch.cat([schedule.sigmas[torch.from_numpy(steps[:t_start][::-1].copy())], end])
        denoiser = self.denoiser(cond, unconditional_conditioning, unconditional_guidance_scale)
        return self.run(denoiser, x_latent, sigmas.tolist(), eta=self.eta, verbose=verbose)[0]
