"""The first stage of latent diffusion: a frozen autoencoder between pixels and the latent space.

Rombach et al., CVPR 2022, sec. 3.1: images are encoded once by a KL- or VQ-regularised autoencoder,
scaled by ``scale_factor`` (unit variance of the latents, appendix G), diffused in that space, and
decoded back. Encoding and decoding can run crop by crop (`PatchwiseMixin`) for large images.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from einops import rearrange

from ldm.models.autoencoder import VQModelInterface
from ldm.models.diffusion.ddpm_module import disabled_train
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import instantiate_from_config


class FirstStageMixin:
    """Encode / decode through ``self.first_stage_model``; expects ``scale_factor`` and ``split_input_params``."""

    def instantiate_first_stage(self, config: Mapping[str, Any]) -> None:
        """Build the autoencoder frozen: eval mode for good, no gradients."""
        model = instantiate_from_config(config, where="model.params.first_stage_config")
        self.first_stage_model = model.eval()
        self.first_stage_model.train = disabled_train.__get__(self.first_stage_model)
        for param in self.first_stage_model.parameters():
            param.requires_grad = False

    def get_first_stage_encoding(self, encoder_posterior: Any) -> torch.Tensor:
        """Scaled latent: a sample of a KL posterior, or the VQ encoder output as is."""
        if isinstance(encoder_posterior, DiagonalGaussianDistribution):
            z = encoder_posterior.sample()
        elif isinstance(encoder_posterior, torch.Tensor):
            z = encoder_posterior
        else:
            raise TypeError(f"encoder_posterior must be a DiagonalGaussianDistribution or a tensor; "
                            f"got {type(encoder_posterior).__name__}")
        return self.scale_factor * z

    def quantize_latent(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` snapped to the codebook of a VQ first stage (an x0 estimate quantized while sampling)."""
        if not isinstance(self.first_stage_model, VQModelInterface):
            raise ValueError(f"quantize_x0 needs a VQ first stage; got {type(self.first_stage_model).__name__}")
        return self.first_stage_model.quantize(z)[0]

    def _patch_distributed(self) -> bool:
        return self.split_input_params is not None and bool(self._split_param("patch_distributed_vq"))

    def _decode_latent(self, z: torch.Tensor, force_not_quantize: bool) -> torch.Tensor:
        if isinstance(self.first_stage_model, VQModelInterface):
            return self.first_stage_model.decode(z, force_not_quantize=force_not_quantize)
        return self.first_stage_model.decode(z)

    def _decode_first_stage(self, z: torch.Tensor, predict_cids: bool = False,
                            force_not_quantize: bool = False) -> torch.Tensor:
        """Undo the scaling and decode; code indices (or logits over them) when ``predict_cids``."""
        if predict_cids:
            if z.dim() == 4:
                z = torch.argmax(z.exp(), dim=1).long()
            z = self.first_stage_model.quantize.get_codebook_entry(z, shape=None)
            z = rearrange(z, "b h w c -> b c h w").contiguous()

        z = 1.0 / self.scale_factor * z
        force_not_quantize = predict_cids or force_not_quantize
        if not self._patch_distributed():
            return self._decode_latent(z, force_not_quantize)

        ks, stride = self._fit_kernel(self._split_param("ks"), self._split_param("stride"), *z.shape[-2:])
        return self._patchwise(z, ks, stride, lambda i, crop: self._decode_latent(crop, force_not_quantize),
                               uf=self._split_param("vqf"))

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor, predict_cids: bool = False,
                           force_not_quantize: bool = False) -> torch.Tensor:
        """Latent (B, C, h, w) -> image (B, 3, H, W), without gradients."""
        return self._decode_first_stage(z, predict_cids=predict_cids, force_not_quantize=force_not_quantize)

    def differentiable_decode_first_stage(self, z: torch.Tensor, predict_cids: bool = False,
                                          force_not_quantize: bool = False) -> torch.Tensor:
        """`decode_first_stage` with gradients flowing to ``z`` (e.g. for guidance through the decoder)."""
        return self._decode_first_stage(z, predict_cids=predict_cids, force_not_quantize=force_not_quantize)

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor) -> Any:
        """Image -> encoder output (a posterior for KL models, a latent tensor for VQ), unscaled."""
        if not self._patch_distributed():
            return self.first_stage_model.encode(x)
        self.split_input_params["original_image_size"] = x.shape[-2:]
        ks, stride = self._fit_kernel(self._split_param("ks"), self._split_param("stride"), *x.shape[-2:])
        return self._patchwise(x, ks, stride, lambda i, crop: self.first_stage_model.encode(crop),
                               df=self._split_param("vqf"))
