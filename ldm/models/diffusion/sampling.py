"""One place that maps a sampler name to a sampler object, and the pieces samplers share.

Every sampler here is built as ``Sampler(model)`` and offers the interface of the original
``DDIMSampler``: ``.sample(S, batch_size, shape, conditioning, ..., x_T, unconditional_guidance_scale,
unconditional_conditioning, callback, img_callback, verbose, log_every_t)`` returning
``(samples, intermediates)``. Names, validated once by :func:`resolve_sampler_name`:

- ``ddpm``: ancestral sampling over all training steps (Ho et al. 2020, Algorithm 2), the model's
  ``p_sample_loop`` arithmetic, here with classifier-free guidance (:class:`DDPMSampler`);
- ``ddim``: DDIM (Song et al. 2021), ``ldm.models.diffusion.ddim.DDIMSampler``;
- ``plms``: pseudo linear multistep (Liu et al. 2022), ``ldm.models.diffusion.plms.PLMSSampler``;
- ``dpmpp2m`` (alias ``dpm_solver++``): DPM-Solver++(2M) (Lu et al. 2022),
  ``ldm.models.diffusion.dpm_solver.DPMSolverSampler``.

Classifier-free guidance (Ho & Salimans 2021) is batched as in the original: one forward pass over
``cat([x, x])`` with ``cat([unconditional, conditional])``, then ``e_u + s * (e_c - e_u)``.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from tqdm import tqdm

from ldm.models.diffusion.sampling_common import (batch_size_of, check_conditioning_batch,  # noqa: F401 (re-exported)
                                                  guided_model_output, raw_model_output)
from ldm.util import get_obj_from_str

logger = logging.getLogger(__name__)

#: Canonical sampler names and the class each one builds.
SAMPLERS = {
    "ddpm": "ldm.models.diffusion.sampling.DDPMSampler",
    "ddim": "ldm.models.diffusion.ddim.DDIMSampler",
    "plms": "ldm.models.diffusion.plms.PLMSSampler",
    "dpmpp2m": "ldm.models.diffusion.dpm_solver.DPMSolverSampler",
}
#: Other spellings accepted on the command line.
SAMPLER_ALIASES = {
    "dpm_solver++": "dpmpp2m",
    "dpmsolver++": "dpmpp2m",
    "dpm++2m": "dpmpp2m",
}
#: Samplers that are deterministic given x_T and accept only eta == 0.
DETERMINISTIC_SAMPLERS = ("plms", "dpmpp2m")


def resolve_sampler_name(name: str) -> str:
    """The canonical name for ``name``; raises ValueError listing the allowed names."""
    key = str(name).strip().lower()
    key = SAMPLER_ALIASES.get(key, key)
    if key not in SAMPLERS:
        allowed = ", ".join(list(SAMPLERS) + list(SAMPLER_ALIASES))
        raise ValueError(f"unknown sampler {name!r}; allowed: {allowed}")
    return key


def check_sampler_options(name: str, eta: float = 0.0) -> str:
    """Validate a sampler name together with its eta before any model is built; returns the canonical name."""
    key = resolve_sampler_name(name)
    if key in DETERMINISTIC_SAMPLERS and eta != 0:
        raise ValueError(f"sampler {key!r} is deterministic and takes eta=0 only; got eta={eta} "
                         f"(use --sampler ddim for eta > 0)")
    if eta < 0:
        raise ValueError(f"eta must be >= 0; got {eta}")
    return key


def make_sampler(name: str, model: torch.nn.Module) -> Any:
    """Build the sampler called ``name`` (see :data:`SAMPLERS`) around ``model``."""
    key = resolve_sampler_name(name)
    return get_obj_from_str(SAMPLERS[key], where=f"sampler {key!r}")(model)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device the model's parameters (or buffers) live on."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _unsupported(name: str, value: Any, default: Any, sampler: str) -> None:
    if value is not default and value != default:
        raise ValueError(f"{sampler} does not support {name}={value!r}; leave it at {default!r}")


class DDPMSampler:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) over all of the model's training steps.

    The arithmetic and the order of random draws are those of the original ``p_sample_loop``
    (``randn`` for x_T, then one ``randn`` per step, none used at t = 0), so the same seed gives the
    same samples; on top of it, classifier-free guidance in one batched forward pass.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model  # a DDPM or LatentDiffusion with the schedule buffers registered

    @property
    def num_timesteps(self) -> int:
        return int(self.model.num_timesteps)

    def _step(self, x: torch.Tensor, t: torch.Tensor, cond: Any, uc: Any, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step x_t -> x_{t-1}; returns (x_{t-1}, x0 prediction)."""
        m = self.model
        out = guided_model_output(m, x, t, cond, uc, scale)
        parameterization = getattr(m, "parameterization", "eps")
        if parameterization == "eps":
            x_recon = (_extract(m.sqrt_recip_alphas_cumprod, t, x) * x
                       - _extract(m.sqrt_recipm1_alphas_cumprod, t, x) * out)
        elif parameterization == "x0":
            x_recon = out
        else:
            raise ValueError(f"parameterization must be 'eps' or 'x0'; got {parameterization!r}")
        if getattr(m, "clip_denoised", True):
            x_recon = x_recon.clamp(-1.0, 1.0)
        mean = _extract(m.posterior_mean_coef1, t, x) * x_recon + _extract(m.posterior_mean_coef2, t, x) * x
        log_var = _extract(m.posterior_log_variance_clipped, t, x)
        noise = torch.randn(x.shape, device=x.device)
        nonzero_mask = (1 - (t == 0).float()).reshape(x.shape[0], *((1,) * (x.dim() - 1)))  # no noise at t == 0
        return mean + nonzero_mask * (0.5 * log_var).exp() * noise, x_recon

    @torch.no_grad()
    def sample(self, S: int | None, batch_size: int, shape: tuple[int, ...], conditioning: Any = None,
               callback: Callable[[int], None] | None = None, normals_sequence: Any = None,
               img_callback: Callable[[torch.Tensor, int], None] | None = None, quantize_x0: bool = False,
               eta: float | None = None, mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
               temperature: float = 1.0, noise_dropout: float = 0.0, score_corrector: Any = None,
               corrector_kwargs: dict | None = None, verbose: bool = True, x_T: torch.Tensor | None = None,
               log_every_t: int = 100, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Draw ``batch_size`` samples of ``shape`` (C, H, W); ``S`` must be None or the model's step count."""
        T = self.num_timesteps
        if S is not None and int(S) != T:
            raise ValueError(f"DDPM ancestral sampling runs all {T} training steps of this model; got S={S} "
                             f"(pass S=None or S={T}, or use a sampler that skips steps: ddim, plms, dpmpp2m)")
        for name, value, default in (("normals_sequence", normals_sequence, None), ("quantize_x0", quantize_x0, False),
                                     ("temperature", temperature, 1.0), ("noise_dropout", noise_dropout, 0.0),
                                     ("score_corrector", score_corrector, None),
                                     ("corrector_kwargs", corrector_kwargs, None)):
            _unsupported(name, value, default, "DDPMSampler")
        if eta is not None and eta != 1.0:
            raise ValueError(f"DDPM ancestral sampling has eta=1 by definition; got eta={eta} (use --sampler ddim)")
        if getattr(self.model, "shorten_cond_schedule", False):
            raise ValueError("DDPMSampler does not support num_timesteps_cond > 1 (shorten_cond_schedule)")
        if mask is not None and x0 is None:
            raise ValueError("mask given without x0: masked sampling needs the known latent x0")
        check_conditioning_batch(conditioning, batch_size)
        device = model_device(self.model)
        size = (batch_size, *shape)
        img = torch.randn(size, device=device) if x_T is None else x_T.to(device)
        intermediates = {"x_inter": [img], "pred_x0": [img]}
        steps = range(T - 1, -1, -1)
        iterator = tqdm(steps, desc="DDPM Sampler", total=T) if verbose else steps
        for i, step in enumerate(iterator):
            ts = torch.full((batch_size,), step, device=device, dtype=torch.long)
            img, pred_x0 = self._step(img, ts, conditioning, unconditional_conditioning, unconditional_guidance_scale)
            if mask is not None:  # the original p_sample_loop re-imposes the known region after the step
                img = self.model.q_sample(x0, ts) * mask + (1.0 - mask) * img
            if step % log_every_t == 0 or step == 0:
                intermediates["x_inter"].append(img)
                intermediates["pred_x0"].append(pred_x0)
            if callback is not None:
                callback(i)
            if img_callback is not None:
                img_callback(pred_x0, i)
        return img, intermediates


def _extract(buffer: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``buffer[t]`` shaped (B, 1, ..., 1) to broadcast against ``x``."""
    return buffer.to(x.device).gather(-1, t).reshape(t.shape[0], *((1,) * (x.dim() - 1)))
