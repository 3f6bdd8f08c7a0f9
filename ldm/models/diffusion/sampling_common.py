"""What the DDIM and PLMS samplers share: the sub-sequence schedule, the guided model call, one step.

"Denoising Diffusion Implicit Models" (Song et al., ICLR 2021): sampling on a sub-sequence of the
training timesteps with x_{t-1} = sqrt(a_{t-1}) x0_hat + sqrt(1 - a_{t-1} - sigma_t^2) eps + sigma_t z
(eq. 12), sigma_t set by eta (eq. 16). Classifier-free guidance ("Classifier-Free Diffusion Guidance",
Ho & Salimans, 2021) evaluates the conditional and unconditional predictions in one batched forward
pass and extrapolates: eps = eps_u + s (eps_c - eps_u). Buffers live on the device of the model; the
noise is drawn with `torch.randn` of the sample's shape once per step, so a seed gives the images of
the original implementation.
"""
from __future__ import annotations

import abc
import logging
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ldm.modules.diffusionmodules.util import make_ddim_sampling_parameters, make_ddim_timesteps, noise_like

logger = logging.getLogger(__name__)


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
    if isinstance(conditioning, dict):
        if not conditioning:
            return None
        return batch_size_of(next(iter(conditioning.values())))
    if isinstance(conditioning, (list, tuple)):
        if conditioning and isinstance(conditioning[0], torch.Tensor):
            return conditioning[0].shape[0]
        return len(conditioning)
    if isinstance(conditioning, torch.Tensor):
        return conditioning.shape[0]
    return None


def check_conditioning_batch(conditioning: Any, batch_size: int) -> None:
    """Warn, as the original samplers do, when the conditioning batch differs from ``batch_size``."""
    cbs = batch_size_of(conditioning)
    if cbs is not None and cbs != batch_size:
        logger.warning("got %d conditionings but batch-size is %d", cbs, batch_size)


def raw_model_output(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
    """The denoiser's output (eps or x0, per ``model.parameterization``) for a batch at integer steps ``t``."""
    if hasattr(model, "apply_model"):  # LatentDiffusion: conditioning routed by its conditioning_key
        return model.apply_model(x, t, cond)
    if cond is not None:
        raise ValueError(f"{type(model).__name__} is unconditional; got a conditioning of type {type(cond).__name__}")
    return model.model(x, t)  # pixel-space DDPM: DiffusionWrapper without conditioning


def guided_model_output(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Any,
                        unconditional_conditioning: Any = None,
                        unconditional_guidance_scale: float = 1.0) -> torch.Tensor:
    """Model output with classifier-free guidance, ``e_u + s * (e_c - e_u)``, in one batched forward."""
    if unconditional_conditioning is None or unconditional_guidance_scale == 1.0:
        return raw_model_output(model, x, t, cond)
    x_in = torch.cat([x] * 2)  # (2B, C, H, W)
    t_in = torch.cat([t] * 2)  # (2B,)
    c_in = cat_conditioning(unconditional_conditioning, cond)
    e_uncond, e_cond = raw_model_output(model, x_in, t_in, c_in).chunk(2)
    return e_uncond + unconditional_guidance_scale * (e_cond - e_uncond)


class DDIMScheduleSampler(abc.ABC):
    """Base of `DDIMSampler` and `PLMSSampler`: schedule set-up, guided model output, the DDIM update."""

    #: Name shown in progress bars and logs.
    sampler_name = "DDIM"

    def __init__(
        self,
        model: torch.nn.Module,  # a DDPM / LatentDiffusion: apply_model, q_sample and the schedule buffers
        schedule: str = "linear",  # kept for compatibility; the schedule is the model's
        **kwargs: Any,
    ) -> None:
        self.model = model
        self.ddpm_num_timesteps = model.num_timesteps
        self.schedule = schedule

    @property
    def device(self) -> torch.device:
        """The device of the model's schedule buffers; every sampler buffer is moved there."""
        return self.model.betas.device

    def register_buffer(self, name: str, attr: Any) -> None:
        """Store a schedule array as a float32 tensor on the model's device."""
        if isinstance(attr, np.ndarray):
            attr = torch.from_numpy(attr)
        if isinstance(attr, torch.Tensor):
            attr = attr.detach().to(torch.float32).to(self.device)
        setattr(self, name, attr)

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0,
                      verbose: bool = True) -> None:
        """Select ``ddim_num_steps`` timesteps and compute alpha_t, alpha_{t-1}, sigma_t on them."""
        if not 0 < ddim_num_steps < self.ddpm_num_timesteps:
            # The schedule shifts every step by one, so S == T would ask for step T, past the last one.
            raise ValueError(f"the number of DDIM steps must be between 1 and {self.ddpm_num_timesteps - 1} "
                             f"(the model has {self.ddpm_num_timesteps} timesteps); got {ddim_num_steps}")
        self.ddim_timesteps = make_ddim_timesteps(ddim_discr_method=ddim_discretize,
                                                  num_ddim_timesteps=ddim_num_steps,
                                                  num_ddpm_timesteps=self.ddpm_num_timesteps, verbose=verbose)
        alphas_cumprod = self.model.alphas_cumprod
        if alphas_cumprod.shape[0] != self.ddpm_num_timesteps:
            raise ValueError(f"the model's alphas_cumprod must have one entry per timestep "
                             f"({self.ddpm_num_timesteps}); got {alphas_cumprod.shape[0]}")
        acp = alphas_cumprod.detach().cpu()

        self.register_buffer("betas", self.model.betas)
        self.register_buffer("alphas_cumprod", alphas_cumprod)
        self.register_buffer("alphas_cumprod_prev", self.model.alphas_cumprod_prev)
        self.register_buffer("sqrt_alphas_cumprod", torch.sqrt(acp))
        self.register_buffer("sqrt_one_minus_alphas_cumprod", torch.sqrt(1.0 - acp))
        self.register_buffer("log_one_minus_alphas_cumprod", torch.log(1.0 - acp))
        self.register_buffer("sqrt_recip_alphas_cumprod", torch.sqrt(1.0 / acp))
        self.register_buffer("sqrt_recipm1_alphas_cumprod", torch.sqrt(1.0 / acp - 1))

        ddim_sigmas, ddim_alphas, ddim_alphas_prev = make_ddim_sampling_parameters(
            alphacums=acp, ddim_timesteps=self.ddim_timesteps, eta=ddim_eta, verbose=verbose)
        self.register_buffer("ddim_sigmas", ddim_sigmas)
        self.register_buffer("ddim_alphas", ddim_alphas)
        self.register_buffer("ddim_alphas_prev", ddim_alphas_prev)
        self.register_buffer("ddim_sqrt_one_minus_alphas", torch.sqrt(1.0 - torch.as_tensor(ddim_alphas)))
        sigmas_for_original_sampling_steps = ddim_eta * torch.sqrt(
            (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
            * (1 - self.alphas_cumprod / self.alphas_cumprod_prev))
        self.register_buffer("ddim_sigmas_for_original_num_steps", sigmas_for_original_sampling_steps)

    # ------------------------------------------------------------------ one step
    def get_model_output(self, x: torch.Tensor, t: torch.Tensor, c: Any, unconditional_guidance_scale: float = 1.0,
                         unconditional_conditioning: Any = None, score_corrector: Any = None,
                         corrector_kwargs: dict | None = None) -> torch.Tensor:
        """Predicted noise, with classifier-free guidance in one batched forward pass when asked."""
        e_t = guided_model_output(self.model, x, t, c, unconditional_conditioning, unconditional_guidance_scale)
        if score_corrector is not None:
            if self.model.parameterization != "eps":
                raise ValueError(f"score_corrector needs parameterization 'eps'; got {self.model.parameterization!r}")
            e_t = score_corrector.modify_score(self.model, e_t, x, t, c, **(corrector_kwargs or {}))
        return e_t

    def _step_parameters(self, use_original_steps: bool):
        if use_original_steps:
            return (self.model.alphas_cumprod, self.model.alphas_cumprod_prev,
                    self.model.sqrt_one_minus_alphas_cumprod, self.ddim_sigmas_for_original_num_steps)
        return self.ddim_alphas, self.ddim_alphas_prev, self.ddim_sqrt_one_minus_alphas, self.ddim_sigmas

    def x_prev_and_pred_x0(self, x: torch.Tensor, e_t: torch.Tensor, index: int, use_original_steps: bool = False,
                           quantize_denoised: bool = False, temperature: float = 1.0, noise_dropout: float = 0.0,
                           repeat_noise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The DDIM update (Song et al. 2021, eq. 12) from x_t and eps at schedule position ``index``."""
        b, device = x.shape[0], x.device
        alphas, alphas_prev, sqrt_one_minus_alphas, sigmas = self._step_parameters(use_original_steps)
        a_t = torch.full((b, 1, 1, 1), alphas[index].item(), device=device)
        a_prev = torch.full((b, 1, 1, 1), alphas_prev[index].item(), device=device)
        sigma_t = torch.full((b, 1, 1, 1), sigmas[index].item(), device=device)
        sqrt_one_minus_at = torch.full((b, 1, 1, 1), sqrt_one_minus_alphas[index].item(), device=device)

        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()  # current estimate of x_0
        if quantize_denoised:
            pred_x0, _, *_ = self.model.first_stage_model.quantize(pred_x0)
        dir_xt = (1.0 - a_prev - sigma_t ** 2).sqrt() * e_t  # direction pointing to x_t
        noise = sigma_t * noise_like(x.shape, device, repeat_noise) * temperature
        if noise_dropout > 0.0:
            noise = torch.nn.functional.dropout(noise, p=noise_dropout)
        x_prev = a_prev.sqrt() * pred_x0 + dir_xt + noise
        return x_prev, pred_x0

    # ------------------------------------------------------------------ the loop
    def _time_range(self, timesteps: int | np.ndarray | None, ddim_use_original_steps: bool):
        if timesteps is None:
            timesteps = self.ddpm_num_timesteps if ddim_use_original_steps else self.ddim_timesteps
        elif not ddim_use_original_steps:
            subset_end = int(min(timesteps / self.ddim_timesteps.shape[0], 1) * self.ddim_timesteps.shape[0]) - 1
            timesteps = self.ddim_timesteps[:subset_end]
        if ddim_use_original_steps:
            return list(reversed(range(0, timesteps))), timesteps
        return list(np.flip(timesteps)), timesteps.shape[0]

    def _run_loop(self, shape: Sequence[int], step_fn: Callable, x_T: torch.Tensor | None = None,
                  ddim_use_original_steps: bool = False, callback: Callable | None = None,
                  timesteps: int | np.ndarray | None = None, mask: torch.Tensor | None = None,
                  x0: torch.Tensor | None = None, img_callback: Callable | None = None, log_every_t: int = 100,
                  verbose: bool = True):
        """Run ``step_fn(img, ts, index, i, time_range) -> (img, pred_x0)`` from x_T down the schedule.

        With ``mask``, the known region (mask 1) is reset to ``x0`` noised to the current level before
        every step. Returns ``(img, {"x_inter": [...], "pred_x0": [...]})``.
        """
        device = self.model.betas.device
        b = shape[0]
        img = torch.randn(shape, device=device) if x_T is None else x_T
        if mask is not None and x0 is None:
            raise ValueError("mask needs x0 (the known latent); got x0=None")

        time_range, total_steps = self._time_range(timesteps, ddim_use_original_steps)
        intermediates = {"x_inter": [img], "pred_x0": [img]}
        logger.info("Running %s Sampling with %d timesteps", self.sampler_name, total_steps)
        iterator = tqdm(time_range, desc=f"{self.sampler_name} Sampler", total=total_steps, disable=not verbose)
        for i, step in enumerate(iterator):
            index = total_steps - i - 1
            ts = torch.full((b,), int(step), device=device, dtype=torch.long)
            if mask is not None:
                img_orig = self.model.q_sample(x0, ts)
                img = img_orig * mask + (1.0 - mask) * img
            img, pred_x0 = step_fn(img, ts, index, i, time_range)
            if callback:
                callback(i)
            if img_callback:
                img_callback(pred_x0, i)
            if index % log_every_t == 0 or index == total_steps - 1:
                intermediates["x_inter"].append(img)
                intermediates["pred_x0"].append(pred_x0)
        return img, intermediates

    @abc.abstractmethod
    def sampling_loop(self, cond: Any, shape: Sequence[int], **kwargs: Any):
        """The sampler's loop over the schedule (``ddim_sampling`` / ``plms_sampling``)."""

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: Sequence[int], conditioning: Any = None,
               callback: Callable | None = None, normals_sequence: Any = None, img_callback: Callable | None = None,
               quantize_x0: bool = False, eta: float = 0.0, mask: torch.Tensor | None = None,
               x0: torch.Tensor | None = None, temperature: float = 1.0, noise_dropout: float = 0.0,
               score_corrector: Any = None, corrector_kwargs: dict | None = None, verbose: bool = True,
               x_T: torch.Tensor | None = None, log_every_t: int = 100, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None, **kwargs: Any):
        """``batch_size`` samples of ``shape`` (C, H, W) in ``S`` steps; returns (samples, intermediates).

        ``unconditional_conditioning`` has the form of ``conditioning`` (e.g. the encoded empty caption);
        ``normals_sequence`` is accepted for compatibility and unused, as in the original.
        """
        check_conditioning_batch(conditioning, batch_size)
        self.make_schedule(ddim_num_steps=S, ddim_eta=eta, verbose=verbose)
        C, H, W = shape
        size = (batch_size, C, H, W)
        logger.info("Data shape for %s sampling is %s, eta %s", self.sampler_name, size, eta)
        return self.sampling_loop(conditioning, size, callback=callback, img_callback=img_callback,
                                  quantize_denoised=quantize_x0, mask=mask, x0=x0, ddim_use_original_steps=False,
                                  noise_dropout=noise_dropout, temperature=temperature,
                                  score_corrector=score_corrector, corrector_kwargs=corrector_kwargs, x_T=x_T,
                                  log_every_t=log_every_t, unconditional_guidance_scale=unconditional_guidance_scale,
                                  unconditional_conditioning=unconditional_conditioning, verbose=verbose)
