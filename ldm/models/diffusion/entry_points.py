"""The original sampling methods of `DDPM` and `LatentDiffusion`, as functions of the model.

``model.p_sample_loop``, ``model.sample``, ``model.progressive_denoising`` and ``model.sample_log`` keep the
original signatures and call these. Ancestral sampling ("Denoising Diffusion Probabilistic Models", Ho et al.,
NeurIPS 2020, Algorithm 2) is the registry's ``ddpm`` sampler (`DDPMSampler`), drawing one `torch.randn` a
step as the original did, so a seed gives the original's samples; ``sample_log`` uses DDIM when asked.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from ldm.models.diffusion.sampling import DDPMSampler, make_sampler, scaled_noise


def take_each(cond: Any, n: int) -> Any:
    """The first ``n`` batch entries of a conditioning in the samplers' form: a tensor, a list of batched
    tensors, or a dict of either."""
    if isinstance(cond, Mapping):
        return {key: [c[:n] for c in value] if isinstance(value, list) else value[:n] for key, value in cond.items()}
    if isinstance(cond, list):
        return [c[:n] for c in cond]
    return cond[:n]


def pixel_p_sample_loop(model: Any, shape: Sequence[int], return_intermediates: bool = False,
                        verbose: bool = True):
    """`DDPM.p_sample_loop`: unconditional ancestral sampling from pure noise of ``shape``."""
    img, intermediates = DDPMSampler(model).sample(None, shape[0], shape[1:], verbose=verbose,
                                                   log_every_t=model.log_every_t)
    return (img, intermediates["x_inter"]) if return_intermediates else img


def _network(model: Any) -> Callable:
    """``model.apply_model`` with the conditioning diffused to the step's level when the model has a
    shortened conditioning schedule (``num_timesteps_cond > 1``), as the original's ancestral loop did."""
    process = model.diffusion
    if process.cond_ids is None:
        return model.apply_model
    if model.model.conditioning_key == "hybrid":
        raise ValueError("num_timesteps_cond > 1 cannot be combined with conditioning_key 'hybrid'")
    return lambda x, t, c: model.apply_model(x, t, process.diffuse_conditioning(c, t))


def ancestral(model: Any, cond: Any, shape: Sequence[int], x_T: torch.Tensor | None = None, steps: int | None = None,
              verbose: bool = True, callback: Callable | None = None, img_callback: Callable | None = None,
              mask: torch.Tensor | None = None, x0: torch.Tensor | None = None, quantize_denoised: bool = False,
              temperature: float | Sequence[float] = 1.0, noise_dropout: float = 0.0, score_corrector: Any = None,
              corrector_kwargs: dict | None = None, log_every_t: int | None = None):
    """Ancestral sampling of a latent model from step ``steps - 1`` down to 0; returns (img, intermediates).
    ``callback(t)`` and ``img_callback(img, t)`` see the training step t; ``temperature`` may be per step."""
    sampler = DDPMSampler(model)
    T = model.num_timesteps
    steps = min(steps or T, T)
    denoiser = sampler.denoiser(cond, quantize_x0=quantize_denoised, score_corrector=score_corrector,
                                corrector_kwargs=corrector_kwargs, network=_network(model))
    temperatures = [float(temperature)] * steps if isinstance(temperature, (int, float)) else temperature

    def hook(i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        if callback:
            callback(steps - 1 - i)
        if img_callback:
            img_callback(x, steps - 1 - i)

    x = torch.randn(shape, device=model.betas.device) if x_T is None else x_T
    return sampler.run(denoiser, x, sampler.sigmas(None)[T - steps:], eta=1.0, mask=mask, x0=x0,
                       noise=lambda x, i: scaled_noise(temperatures[steps - 1 - i], noise_dropout)(x, i),
                       hook=hook, log_every_t=log_every_t or model.log_every_t, verbose=verbose)


def progressive_denoising(model: Any, cond: Any, shape: Sequence[int], verbose: bool = True, callback=None,
                          quantize_denoised: bool = False, img_callback=None, mask: torch.Tensor | None = None,
                          x0: torch.Tensor | None = None, temperature: float | Sequence[float] = 1.0,
                          noise_dropout: float = 0.0, score_corrector: Any = None, corrector_kwargs: dict | None = None,
                          batch_size: int | None = None, x_T: torch.Tensor | None = None, start_T: int | None = None,
                          log_every_t: int | None = None):
    """`LatentDiffusion.progressive_denoising`: ancestral sampling that records the x_0 estimates along the way."""
    if batch_size is not None:
        shape = [batch_size] + list(shape)
    cond = take_each(cond, shape[0]) if cond is not None else None
    img, intermediates = ancestral(model, cond, shape, x_T, start_T, verbose, callback, img_callback, mask, x0,
                                   quantize_denoised, temperature, noise_dropout, score_corrector, corrector_kwargs,
                                   log_every_t)
    return img, intermediates["pred_x0"][1:]


def p_sample_loop(model: Any, cond: Any, shape: Sequence[int], return_intermediates: bool = False,
                  x_T: torch.Tensor | None = None, verbose: bool = True, callback=None, timesteps: int | None = None,
                  quantize_denoised: bool = False, mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                  img_callback=None, start_T: int | None = None, log_every_t: int | None = None):
    """`LatentDiffusion.p_sample_loop`: ancestral sampling; ``mask`` keeps the known regions of ``x0``."""
    T = model.num_timesteps
    steps = min(timesteps or T, start_T or T)
    img, intermediates = ancestral(model, cond, shape, x_T, steps, verbose, callback, img_callback, mask, x0,
                                   quantize_denoised, log_every_t=log_every_t)
    return (img, intermediates["x_inter"]) if return_intermediates else img


def sample(model: Any, cond: Any, batch_size: int = 16, return_intermediates: bool = False,
           x_T: torch.Tensor | None = None, verbose: bool = True, timesteps: int | None = None,
           quantize_denoised: bool = False, mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
           shape: Sequence[int] | None = None, **kwargs: Any):
    """`LatentDiffusion.sample`: ancestral samples of ``shape`` (default (batch_size, C, H, W) of the model);
    other keyword arguments (such as the ``eta`` of `sample_log`'s DDIM) are ignored, as by the original."""
    if shape is None:
        shape = (batch_size, model.channels, model.image_size, model.image_size)
    if cond is not None:
        cond = take_each(cond, batch_size)
    return p_sample_loop(model, cond, shape, return_intermediates=return_intermediates, x_T=x_T, verbose=verbose,
                         timesteps=timesteps, quantize_denoised=quantize_denoised, mask=mask, x0=x0)


def sample_log(model: Any, cond: Any, batch_size: int, ddim: bool, ddim_steps: int | None, **kwargs: Any):
    """`LatentDiffusion.sample_log`: DDIM with ``ddim_steps`` steps, or the full ancestral chain; returns
    (samples, intermediates)."""
    if ddim:
        shape = (model.channels, model.image_size, model.image_size)
        return make_sampler("ddim", model).sample(ddim_steps, batch_size, shape, cond, verbose=False, **kwargs)
    return sample(model, cond, batch_size=batch_size, return_intermediates=True, **kwargs)
