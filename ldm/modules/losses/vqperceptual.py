"""The VQGAN first-stage loss: pixel + LPIPS reconstruction, codebook loss, and a PatchGAN with adaptive weight.

Esser et al., "Taming Transformers for High-Resolution Image Synthesis", CVPR 2021 (eq. 4-7: the
perceptual reconstruction loss, the hinge GAN loss and the adaptive weight lambda); used for the VQ
first stages of Rombach et al., CVPR 2022. This module also holds the pieces the KL loss
(`ldm.modules.losses.contperceptual`) shares: the discriminator losses, `adopt_weight` and
`PatchGANPerceptualLoss`, the common base of both losses.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.losses.discriminator import NLayerDiscriminator, weights_init
from ldm.modules.losses.lpips import LPIPS

logger = logging.getLogger(__name__)

ADAPTIVE_WEIGHT_EPS = 1e-4  # added to |grad of the GAN loss| in the adaptive weight
ADAPTIVE_WEIGHT_MAX = 1e4  # the adaptive weight is clamped to [0, 1e4]
PERPLEXITY_EPS = 1e-10  # inside the log of measure_perplexity


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss: ``(mean relu(1 - real) + mean relu(1 + fake)) / 2``."""
    loss_real = torch.mean(F.relu(1.0 - logits_real))
    loss_fake = torch.mean(F.relu(1.0 + logits_fake))
    return 0.5 * (loss_real + loss_fake)


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating (binary cross-entropy) discriminator loss: ``(mean softplus(-real) + mean softplus(fake)) / 2``."""
    return 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))


def hinge_d_loss_with_exemplar_weights(logits_real: torch.Tensor, logits_fake: torch.Tensor,
                                       weights: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss with one weight per example, ``weights`` of shape ``(B,)``."""
    if not weights.shape[0] == logits_real.shape[0] == logits_fake.shape[0]:
        raise ValueError(f"weights, logits_real and logits_fake must share the batch size; got "
                         f"{weights.shape[0]}, {logits_real.shape[0]}, {logits_fake.shape[0]}")
    loss_real = torch.mean(F.relu(1.0 - logits_real), dim=[1, 2, 3])  # (B,)
    loss_fake = torch.mean(F.relu(1.0 + logits_fake), dim=[1, 2, 3])  # (B,)
    loss_real = (weights * loss_real).sum() / weights.sum()
    loss_fake = (weights * loss_fake).sum() / weights.sum()
    return 0.5 * (loss_real + loss_fake)


DISC_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "hinge": hinge_d_loss,
    "vanilla": vanilla_d_loss,
}


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """``weight`` from step ``threshold`` on, ``value`` before it (switches the GAN loss on at disc_start)."""
    if global_step < threshold:
        weight = value
    return weight


def measure_perplexity(predicted_indices: torch.Tensor, n_embed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook perplexity (``n_embed`` when all codes are used equally often) and the number of codes used."""
    encodings = F.one_hot(predicted_indices, n_embed).float().reshape(-1, n_embed)  # (N, n_embed)
    avg_probs = encodings.mean(0)
    perplexity = (-(avg_probs * torch.log(avg_probs + PERPLEXITY_EPS)).sum()).exp()
    cluster_use = torch.sum(avg_probs > 0)
    return perplexity, cluster_use


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.abs(x - y)


def l2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.pow((x - y), 2)


PIXEL_LOSSES = {"l1": l1, "l2": l2}


def _skip_perceptual_entries(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    """Drop the LPIPS weights of a checkpoint trained with a perceptual term from a loss that has none."""
    for key in [k for k in state_dict if k.startswith(prefix + "perceptual_loss.")]:
        del state_dict[key]


class PatchGANPerceptualLoss(nn.Module):
    """What the VQ and KL first-stage losses share: a frozen LPIPS, a PatchGAN, the adaptive GAN weight
    (Esser et al. 2021, eq. 7) and the discriminator update.

    Submodules are ``perceptual_loss`` (LPIPS) and ``discriminator`` (PatchGAN ``main.*``), the original's keys.
    With ``perceptual_weight`` 0 no LPIPS network is built (it would never run), and the
    ``perceptual_loss.*`` entries of a state dict that has them are skipped when loading.
    """

    def __init__(self, *,
                 disc_start: int,  # global step from which the GAN losses are switched on
                 disc_num_layers: int,  # stride-2 layers of the PatchGAN
                 disc_in_channels: int,  # discriminator input channels (image, plus cond when conditional)
                 disc_factor: float,  # weight of the GAN losses once switched on
                 disc_weight: float,  # multiplies the adaptive weight of the generator's GAN loss
                 perceptual_weight: float,  # weight of the LPIPS term; 0 computes no LPIPS
                 use_actnorm: bool,  # ActNorm instead of BatchNorm in the discriminator
                 disc_conditional: bool,  # the discriminator also sees `cond`, concatenated along channels
                 disc_loss: str,  # "hinge" or "vanilla"
                 disc_ndf: int = 64,  # channels of the first discriminator layer
                 ):
        super().__init__()
        if disc_loss not in DISC_LOSSES:
            raise ValueError(f"disc_loss must be one of {', '.join(DISC_LOSSES)}; got {disc_loss!r}")
        self.perceptual_loss = LPIPS().eval() if perceptual_weight > 0 else None
        self.perceptual_weight = perceptual_weight
        if self.perceptual_loss is None:
            self.register_load_state_dict_pre_hook(_skip_perceptual_entries)
        self.discriminator = NLayerDiscriminator(input_nc=disc_in_channels, n_layers=disc_num_layers,
                                                 use_actnorm=use_actnorm, ndf=disc_ndf).apply(weights_init)
        self.discriminator_iter_start = disc_start
        self.disc_loss = DISC_LOSSES[disc_loss]
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight
        self.disc_conditional = disc_conditional

    def calculate_adaptive_weight(self, nll_loss: torch.Tensor, g_loss: torch.Tensor,
                                  last_layer: torch.Tensor | None = None) -> torch.Tensor:
        """``disc_weight * |grad nll| / (|grad g_loss| + 1e-4)`` at the decoder's last layer, clamped, detached."""
        if last_layer is None:
            raise ValueError("calculate_adaptive_weight needs last_layer (the decoder's output conv weight); got None")
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + ADAPTIVE_WEIGHT_EPS)
        d_weight = torch.clamp(d_weight, 0.0, ADAPTIVE_WEIGHT_MAX).detach()
        return d_weight * self.discriminator_weight

    def _adaptive_weight_or_zero(self, nll_loss: torch.Tensor, g_loss: torch.Tensor,
                                 last_layer: torch.Tensor | None) -> torch.Tensor:
        # outside training (validation under no_grad / inference_mode) there is no graph to differentiate
        try:
            return self.calculate_adaptive_weight(nll_loss, g_loss, last_layer=last_layer)
        except RuntimeError:
            if self.training:
                raise
            return torch.zeros((), device=g_loss.device)

    def _check_cond(self, cond: torch.Tensor | None) -> None:
        if cond is None and self.disc_conditional:
            raise ValueError("disc_conditional=True: pass cond (concatenated to the discriminator input)")
        if cond is not None and not self.disc_conditional:
            raise ValueError("cond was given but the discriminator is unconditional (disc_conditional=False)")

    def _discriminate(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        self._check_cond(cond)
        x = x.contiguous()
        if cond is not None:
            x = torch.cat((x, cond), dim=1)  # (B, C + C_cond, H, W)
        return self.discriminator(x)  # (B, 1, h, w)

    def _rec_and_perceptual(self, pixel_rec: torch.Tensor, inputs: torch.Tensor,
                            reconstructions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixel_rec + perceptual_weight * LPIPS`` per pixel, and the LPIPS distance (B, 1, 1, 1) or 0."""
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())  # (B, 1, 1, 1)
            return pixel_rec + self.perceptual_weight * p_loss, p_loss
        return pixel_rec, torch.zeros(1, device=inputs.device)

    def _generator_gan_terms(self, nll_loss: torch.Tensor, reconstructions: torch.Tensor, cond: torch.Tensor | None,
                             global_step: int, last_layer: torch.Tensor | None,
                             zero_weight_when_off: bool = False) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The generator's GAN loss, its adaptive weight and ``disc_factor`` at ``global_step``.

        With ``zero_weight_when_off`` (the KL loss, as in the original) the weight is 0 without computing it
        when ``disc_factor`` is 0.
        """
        logits_fake = self._discriminate(reconstructions, cond)  # (B, 1, h, w)
        g_loss = -torch.mean(logits_fake)
        if zero_weight_when_off and not self.disc_factor > 0.0:
            d_weight = torch.zeros((), device=g_loss.device)
        else:
            d_weight = self._adaptive_weight_or_zero(nll_loss, g_loss, last_layer)
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        return g_loss, d_weight, disc_factor

    @staticmethod
    def _generator_log(split: str, loss: torch.Tensor, terms: dict[str, torch.Tensor], g_loss: torch.Tensor,
                       d_weight: torch.Tensor, disc_factor: float) -> dict[str, torch.Tensor]:
        """The values a generator step logs under ``split/``: the total loss, the loss's own ``terms`` (means,
        detached), then the GAN terms."""
        log = {f"{split}/total_loss": loss.clone().detach().mean()}
        log.update({f"{split}/{name}": value.detach().mean() for name, value in terms.items()})
        log.update({f"{split}/d_weight": d_weight.detach(),
                    f"{split}/disc_factor": torch.tensor(float(disc_factor)),
                    f"{split}/g_loss": g_loss.detach().mean()})
        return log

    def _discriminator_step(self, inputs: torch.Tensor, reconstructions: torch.Tensor, cond: torch.Tensor | None,
                            global_step: int, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The discriminator loss (optimizer index 1) on detached real and reconstructed images."""
        logits_real = self._discriminate(inputs.detach(), cond)  # (B, 1, h, w)
        logits_fake = self._discriminate(reconstructions.detach(), cond)  # (B, 1, h, w)
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
        log = {f"{split}/disc_loss": d_loss.clone().detach().mean(),
               f"{split}/logits_real": logits_real.detach().mean(),
               f"{split}/logits_fake": logits_fake.detach().mean()}
        return d_loss, log


class VQLPIPSWithDiscriminator(PatchGANPerceptualLoss):
    """The VQGAN loss: ``mean(pixel + w_p LPIPS) + lambda * disc_factor * g_loss + codebook_weight * q_loss``."""

    def __init__(self,
                 disc_start: int,  # global step from which the GAN losses are switched on
                 codebook_weight: float = 1.0,  # weight of the quantizer's codebook/commitment loss
                 pixelloss_weight: float = 1.0,  # kept for the original's signature; the pixel loss is unweighted
                 disc_num_layers: int = 3,  # stride-2 layers of the PatchGAN
                 disc_in_channels: int = 3,  # discriminator input channels
                 disc_factor: float = 1.0,  # weight of the GAN losses once switched on
                 disc_weight: float = 1.0,  # multiplies the adaptive weight of the generator's GAN loss
                 perceptual_weight: float = 1.0,  # weight of the LPIPS term
                 use_actnorm: bool = False,  # ActNorm instead of BatchNorm in the discriminator
                 disc_conditional: bool = False,  # the discriminator also sees `cond`
                 disc_ndf: int = 64,  # channels of the first discriminator layer
                 disc_loss: str = "hinge",  # "hinge" or "vanilla"
                 n_classes: int | None = None,  # codebook size; when set, perplexity and code usage are logged
                 perceptual_loss: str = "lpips",  # only "lpips"
                 pixel_loss: str = "l1",  # "l1" or "l2"
                 ):
        if perceptual_loss != "lpips":
            raise ValueError(f"perceptual_loss must be 'lpips'; got {perceptual_loss!r}")
        if pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"pixel_loss must be one of {', '.join(PIXEL_LOSSES)}; got {pixel_loss!r}")
        super().__init__(disc_start=disc_start, disc_num_layers=disc_num_layers, disc_in_channels=disc_in_channels,
                         disc_factor=disc_factor, disc_weight=disc_weight, perceptual_weight=perceptual_weight,
                         use_actnorm=use_actnorm, disc_conditional=disc_conditional, disc_loss=disc_loss,
                         disc_ndf=disc_ndf)
        self.codebook_weight = codebook_weight
        self.pixel_weight = pixelloss_weight
        self.pixel_loss = PIXEL_LOSSES[pixel_loss]
        self.n_classes = n_classes

    def forward(self, codebook_loss: torch.Tensor | None, inputs: torch.Tensor, reconstructions: torch.Tensor,
                optimizer_idx: int, global_step: int, last_layer: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, split: str = "train",
                predicted_indices: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Generator loss (``optimizer_idx`` 0) or discriminator loss (1), with the values to log."""
        if optimizer_idx not in (0, 1):
            raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator); got {optimizer_idx!r}")
        if optimizer_idx == 1:  # the reconstruction terms do not enter the discriminator loss
            return self._discriminator_step(inputs, reconstructions, cond, global_step, split)

        if codebook_loss is None:
            codebook_loss = torch.zeros(1, device=inputs.device)
        rec_loss, p_loss = self._rec_and_perceptual(self.pixel_loss(inputs.contiguous(), reconstructions.contiguous()),
                                                    inputs, reconstructions)  # (B, C, H, W)
        nll_loss = torch.mean(rec_loss)
        g_loss, d_weight, disc_factor = self._generator_gan_terms(nll_loss, reconstructions, cond, global_step,
                                                                  last_layer)
        loss = nll_loss + d_weight * disc_factor * g_loss + self.codebook_weight * codebook_loss.mean()

        log = self._generator_log(split, loss, {"quant_loss": codebook_loss, "nll_loss": nll_loss,
                                                "rec_loss": rec_loss, "p_loss": p_loss}, g_loss, d_weight, disc_factor)
        if predicted_indices is not None and self.n_classes is not None:
            with torch.no_grad():
                perplexity, cluster_usage = measure_perplexity(predicted_indices, self.n_classes)
            log[f"{split}/perplexity"] = perplexity
            log[f"{split}/cluster_usage"] = cluster_usage
        return loss, log
