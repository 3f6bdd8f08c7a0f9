"""The KL first-stage loss: LPIPS reconstruction as a Laplace likelihood with a learned scale, KL, PatchGAN.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", CVPR 2022 (sec. 3 and
appendix G: the KL-regularized autoencoders), with the perceptual and adversarial terms and the adaptive
weight of VQGAN (Esser et al., CVPR 2021) and the VAE objective of Kingma & Welling, ICLR 2014.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ldm.modules.losses.vqperceptual import PatchGANPerceptualLoss


class LPIPSWithDiscriminator(PatchGANPerceptualLoss):
    """``sum(|x - x_rec| + w_p LPIPS) / exp(logvar) + logvar`` per image, ``+ kl_weight * KL + lambda * g_loss``.

    Holds the learnable scalar ``logvar`` (the original never hands it to an optimizer; neither do we).
    """

    def __init__(self,
                 disc_start: int,  # global step from which the GAN losses are switched on
                 logvar_init: float = 0.0,  # initial log-variance of the reconstruction likelihood
                 kl_weight: float = 1.0,  # weight of the KL term
                 pixelloss_weight: float = 1.0,  # kept for the original's signature; the pixel loss is unweighted
                 disc_num_layers: int = 3,  # stride-2 layers of the PatchGAN
                 disc_in_channels: int = 3,  # discriminator input channels
                 disc_factor: float = 1.0,  # weight of the GAN losses once switched on; 0 skips the adaptive weight
                 disc_weight: float = 1.0,  # multiplies the adaptive weight of the generator's GAN loss
                 perceptual_weight: float = 1.0,  # weight of the LPIPS term
                 use_actnorm: bool = False,  # ActNorm instead of BatchNorm in the discriminator
                 disc_conditional: bool = False,  # the discriminator also sees `cond`
                 disc_loss: str = "hinge",  # "hinge" or "vanilla"
                 ):
        super().__init__(disc_start=disc_start, disc_num_layers=disc_num_layers, disc_in_channels=disc_in_channels,
                         disc_factor=disc_factor, disc_weight=disc_weight, perceptual_weight=perceptual_weight,
                         use_actnorm=use_actnorm, disc_conditional=disc_conditional, disc_loss=disc_loss)
        self.kl_weight = kl_weight
        self.pixel_weight = pixelloss_weight
        self.logvar = nn.Parameter(torch.ones(size=()) * logvar_init)

    def forward(self, inputs: torch.Tensor, reconstructions: torch.Tensor, posteriors: Any, optimizer_idx: int,
                global_step: int, last_layer: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                split: str = "train", weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Generator loss (``optimizer_idx`` 0) or discriminator loss (1), with the values to log.

        ``posteriors`` is the encoder's DiagonalGaussianDistribution; ``weights`` optionally weights the
        reconstruction term per element (broadcast against ``(B, C, H, W)``).
        """
        if optimizer_idx not in (0, 1):
            raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator); got {optimizer_idx!r}")
        if optimizer_idx == 1:  # the reconstruction and KL terms do not enter the discriminator loss
            return self._discriminator_step(inputs, reconstructions, cond, global_step, split)

        rec_loss, _ = self._rec_and_perceptual(torch.abs(inputs.contiguous() - reconstructions.contiguous()),
                                               inputs, reconstructions)  # (B, C, H, W)
        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar  # (B, C, H, W)
        weighted_nll_loss = nll_loss if weights is None else weights * nll_loss
        weighted_nll_loss = torch.sum(weighted_nll_loss) / weighted_nll_loss.shape[0]  # per image
        nll_loss = torch.sum(nll_loss) / nll_loss.shape[0]
        kl_loss = posteriors.kl()  # (B,)
        kl_loss = torch.sum(kl_loss) / kl_loss.shape[0]

        g_loss, d_weight, disc_factor = self._generator_gan_terms(nll_loss, reconstructions, cond, global_step,
                                                                  last_layer, zero_weight_when_off=True)
        loss = weighted_nll_loss + self.kl_weight * kl_loss + d_weight * disc_factor * g_loss

        log = self._generator_log(split, loss, {"logvar": self.logvar, "kl_loss": kl_loss, "nll_loss": nll_loss,
                                                "rec_loss": rec_loss}, g_loss, d_weight, disc_factor)
        return loss, log


class DummyLoss(nn.Module):
    """A loss placeholder without parameters, for first stages that are only ever used frozen."""
