"""The first stage of latent diffusion: a frozen autoencoder between pixels and the latent space.

Rombach et al., CVPR 2022, sec. 3.1: images are encoded once by a KL- or VQ-regularised autoencoder,
scaled by ``scale_factor`` (unit variance of the latents, appendix G), diffused in that space, and
decoded back. With ``split_input_params`` holding ``patch_distributed_vq``, encoding and decoding run crop
by crop (`patches`) for large images. `LatentDiffusion`'s first-stage methods call these functions.
"""
from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import nn

from ldm.models.autoencoder import VQModelInterface
from ldm.models.diffusion.patches import patchwise_fitted, split_param
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution


def disabled_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement for ``module.train`` that keeps a frozen module in eval mode whatever is asked."""
    return self


def freeze(module: nn.Module) -> nn.Module:
    """``module`` in eval mode for good (``train()`` does nothing), without gradients."""
    module = module.eval()
    module.train = disabled_train.__get__(module)
    for param in module.parameters():
        param.requires_grad = False
    return module


def first_stage_encoding(encoder_posterior: Any, scale_factor: float | torch.Tensor) -> torch.Tensor:
    """Scaled latent: a sample of a KL posterior, or the VQ encoder output as is, times ``scale_factor``."""
    if isinstance(encoder_posterior, DiagonalGaussianDistribution):
        z = encoder_posterior.sample()
    elif isinstance(encoder_posterior, torch.Tensor):
        z = encoder_posterior
    else:
        raise TypeError(f"encoder_posterior must be a DiagonalGaussianDistribution or a tensor; "
                        f"got {type(encoder_posterior).__name__}")
    return scale_factor * z


def quantize_latent(first_stage_model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``z`` snapped to the codebook of a VQ first stage (an x0 estimate quantized while sampling)."""
    if not isinstance(first_stage_model, VQModelInterface):
        raise ValueError(f"quantize_x0 needs a VQ first stage; got {type(first_stage_model).__name__}")
    return first_stage_model.quantize(z)[0]


def _patch_distributed(split_input_params: dict[str, Any] | None) -> bool:
    return split_input_params is not None and bool(split_param(split_input_params, "patch_distributed_vq"))


def _decode_latent(first_stage_model: nn.Module, z: torch.Tensor, force_not_quantize: bool) -> torch.Tensor:
    if isinstance(first_stage_model, VQModelInterface):
        return first_stage_model.decode(z, force_not_quantize=force_not_quantize)
    return first_stage_model.decode(z)


def decode(first_stage_model: nn.Module, z: torch.Tensor, scale_factor: float | torch.Tensor,
           split_input_params: dict[str, Any] | None = None, predict_cids: bool = False,
           force_not_quantize: bool = False) -> torch.Tensor:
    """Scaled latent (B, C, h, w) -> image (B, 3, H, W); code indices (or logits over them) when ``predict_cids``."""
    if predict_cids:
        if z.dim() == 4:
            z = torch.argmax(z.exp(), dim=1).long()
        z = first_stage_model.quantize.get_codebook_entry(z, shape=None)
        z = rearrange(z, "b h w c -> b c h w").contiguous()

    z = 1.0 / scale_factor * z
    force_not_quantize = predict_cids or force_not_quantize
    if not _patch_distributed(split_input_params):
        return _decode_latent(first_stage_model, z, force_not_quantize)
    return patchwise_fitted(split_input_params, z, lambda i, crop: _decode_latent(first_stage_model, crop,
                                                                                  force_not_quantize),
                            uf=split_param(split_input_params, "vqf"))


def encode(first_stage_model: nn.Module, x: torch.Tensor, split_input_params: dict[str, Any] | None = None) -> Any:
    """Image -> encoder output (a posterior for KL models, a latent tensor for VQ), unscaled. Crop by crop, the
    image size is recorded in ``split_input_params["original_image_size"]`` for the bounding-box conditioning."""
    if not _patch_distributed(split_input_params):
        return first_stage_model.encode(x)
    split_input_params["original_image_size"] = x.shape[-2:]
    return patchwise_fitted(split_input_params, x, lambda i, crop: first_stage_model.encode(crop),
                            df=split_param(split_input_params, "vqf"))
