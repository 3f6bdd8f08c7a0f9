"""The first stages of latent diffusion: VQ- and KL-regularized autoencoders, trained adversarially.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", CVPR 2022 (sec. 3.1,
appendix G): a convolutional encoder/decoder with either a vector-quantization layer (VQGAN, Esser et
al., CVPR 2021; `VQModel`) or a Gaussian posterior with a small KL penalty (Kingma & Welling, ICLR 2014;
`AutoencoderKL`), trained with L1 + LPIPS reconstruction and a PatchGAN.

Training on pytorch-lightning 2.x: the generator/discriminator pair uses manual optimization. Each
``training_step`` runs the original's two optimizer passes in order: the autoencoder update
(``optimizer_idx`` 0), then the discriminator update (``optimizer_idx`` 1) on reconstructions of the
just-updated autoencoder, as Lightning 1.x did with two optimizers. The losses receive `batch_step`
(batches trained so far), which is what the original's ``global_step`` counted.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.vqvae.quantize import VectorQuantizer2 as VectorQuantizer
from ldm.util import channels_first, instantiate_from_config

logger = logging.getLogger(__name__)

ADAM_BETAS = (0.5, 0.9)  # Adam betas of both optimizers (VQGAN's)
VQ_BETA = 0.25  # commitment weight of the quantizer
RESIZE_WARMUP_STEPS = 4  # with batch_resize_range, the first batches run at the largest size (avoids a late OOM)
RESIZE_STRIDE = 16  # with batch_resize_range, sizes are drawn from lower, lower + 16, ..., upper


def _plain(value: Any) -> Any:
    """Plain dicts/lists from a (possibly omegaconf) nested config."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


class AdversarialAutoencoder(pl.LightningModule):
    """What `VQModel` and `AutoencoderKL` share: encoder/decoder, loss, input handling, checkpoint loading and
    the manual-optimization training step over the autoencoder and discriminator optimizers."""

    def __init__(self,
                 ddconfig: Mapping[str, Any],  # Encoder/Decoder parameters
                 lossconfig: Mapping[str, Any],  # {target, params} of the training loss (torch.nn.Identity: none)
                 image_key: str,  # batch entry holding the images, (B, H, W, C)
                 colorize_nlabels: int | None,  # channels of segmentation inputs to colorize for logging
                 monitor: str | None,  # metric the checkpoint callback tracks
                 learning_rate: float,  # base learning rate; main.py sets it from base_learning_rate
                 accumulate_grad_batches: int,  # batches whose gradients are summed before each optimizer step
                 ):
        super().__init__()
        self.automatic_optimization = False
        self.image_key = image_key
        ddconfig = _plain(ddconfig)
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = instantiate_from_config(lossconfig)
        if colorize_nlabels is not None and not isinstance(colorize_nlabels, int):
            raise TypeError(f"colorize_nlabels must be an int or None; got {colorize_nlabels!r}")
        # random projection of segmentation maps to RGB for logging; a None buffer is not in the state dict
        self.register_buffer("colorize", None if colorize_nlabels is None else torch.randn(3, colorize_nlabels, 1, 1))
        self.monitor = monitor
        self.learning_rate = learning_rate
        if accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1; got {accumulate_grad_batches!r}")
        self.accumulate_grad_batches = accumulate_grad_batches

    # ---------------------------------------------------------------------------------------- to override
    def _reconstruct(self, x: torch.Tensor) -> tuple:
        """The forward pass whose outputs `_compute_loss` takes."""
        raise NotImplementedError(f"{type(self).__name__} must define _reconstruct")

    def _compute_loss(self, x: torch.Tensor, outputs: tuple, optimizer_idx: int, split: str,
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError(f"{type(self).__name__} must define _compute_loss")

    def _log_train(self, name: str, loss: torch.Tensor, log: dict[str, torch.Tensor], batch_size: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define _log_train")

    def generator_parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError(f"{type(self).__name__} must define generator_parameters")

    # ---------------------------------------------------------------------------------------- shared
    def init_from_ckpt(self, path: str, ignore_keys: Sequence[str] | None = None) -> None:
        """Load weights from a checkpoint (.ckpt, .pt or .safetensors), dropping keys that start with ``ignore_keys``."""
        from ldm.checkpoint import restore_weights

        restore_weights(self, path, ignore_keys)

    def get_input(self, batch: Mapping[str, torch.Tensor], k: str) -> torch.Tensor:
        """``batch[k]`` as a contiguous float ``(B, C, H, W)`` tensor (from ``(B, H, W, C)`` or ``(B, H, W)``)."""
        return channels_first(batch[k])

    def get_last_layer(self) -> torch.Tensor:
        """The decoder's output convolution weight, where the loss balances reconstruction and GAN gradients."""
        return self.decoder.conv_out.weight

    @property
    def batch_step(self) -> int:
        """Optimizer cycles (one autoencoder and one discriminator step) done: the original's ``global_step``.

        Under manual optimization Lightning 2.x counts each of the two optimizer steps in ``global_step``.
        """
        return self.global_step // 2

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Project a multi-channel segmentation map to 3 channels in [-1, 1] with a fixed random projection."""
        if self.image_key != "segmentation":
            raise ValueError(f"to_rgb colorizes segmentation maps (image_key 'segmentation'); "
                             f"image_key is {self.image_key!r}")
        if self.colorize is None:
            self.colorize = torch.randn(3, x.shape[1], 1, 1).to(x)
        x = F.conv2d(x, weight=self.colorize)  # (B, 3, H, W)
        return 2.0 * (x - x.min()) / (x.max() - x.min()) - 1.0

    def _optimizers_step(self, optimizer: Any, loss: torch.Tensor, step_now: bool) -> None:
        self.manual_backward(loss / self.accumulate_grad_batches)
        if step_now:
            optimizer.step()
            optimizer.zero_grad()

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        x = self.get_input(batch, self.image_key)
        opt_ae, opt_disc = self.optimizers()
        step_now = (batch_idx + 1) % self.accumulate_grad_batches == 0

        # autoencoder update (the original's optimizer_idx 0)
        self.toggle_optimizer(opt_ae)
        aeloss, log_ae = self._compute_loss(x, self._reconstruct(x), 0, "train")
        self._optimizers_step(opt_ae, aeloss, step_now)
        self.untoggle_optimizer(opt_ae)

        # discriminator update (optimizer_idx 1) on reconstructions of the updated autoencoder
        self.toggle_optimizer(opt_disc)
        with torch.no_grad():
            outputs = self._reconstruct(x)
        discloss, log_disc = self._compute_loss(x, outputs, 1, "train")
        self._optimizers_step(opt_disc, discloss, step_now)
        self.untoggle_optimizer(opt_disc)

        if step_now:
            self.on_optimizers_stepped()
            schedulers = self.lr_schedulers()
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
                scheduler.step()
        self._log_train("aeloss", aeloss, log_ae, x.shape[0])
        self._log_train("discloss", discloss, log_disc, x.shape[0])

    def on_optimizers_stepped(self) -> None:
        """Called once both optimizers have stepped (every ``accumulate_grad_batches`` batches), inside the
        training step, so before any callback writes a checkpoint of that step."""

    def _adam_pair(self, lr_g: float, lr_d: float) -> list[torch.optim.Optimizer]:
        opt_ae = torch.optim.Adam(self.generator_parameters(), lr=lr_g, betas=ADAM_BETAS)
        opt_disc = torch.optim.Adam(self.loss.discriminator.parameters(), lr=lr_d, betas=ADAM_BETAS)
        return [opt_ae, opt_disc]


class VQModel(AdversarialAutoencoder):
    """The VQ-regularized first stage: ``encode`` gives quantized latents, ``decode`` images."""

    def __init__(self,
                 ddconfig: Mapping[str, Any],  # Encoder/Decoder parameters (z_channels, ch, ch_mult, ...)
                 lossconfig: Mapping[str, Any],  # {target, params} of the loss, e.g. VQLPIPSWithDiscriminator
                 n_embed: int,  # codebook size
                 embed_dim: int,  # codebook vector dimension (latent channels after quant_conv)
                 ckpt_path: str | None = None,  # checkpoint to initialize from
                 ignore_keys: Sequence[str] | None = None,  # key prefixes to drop from that checkpoint
                 image_key: str = "image",  # batch entry holding the images, (B, H, W, C)
                 colorize_nlabels: int | None = None,  # channels of segmentation inputs to colorize for logging
                 monitor: str | None = None,  # metric the checkpoint callback tracks
                 batch_resize_range: Sequence[int] | None = None,  # (lower, upper): random per-batch input size
                 scheduler_config: Mapping[str, Any] | None = None,  # {target, params} of a step -> lr-multiplier
                 lr_g_factor: float = 1.0,  # autoencoder learning rate = lr_g_factor * learning_rate
                 remap: str | None = None,  # .npy of used code indices for the quantizer
                 sane_index_shape: bool = False,  # the quantizer returns indices as (B, H, W)
                 use_ema: bool = False,  # keep an exponential moving average of the weights (model_ema.*)
                 learning_rate: float = 4.5e-6,  # base learning rate; main.py sets it from base_learning_rate
                 accumulate_grad_batches: int = 1,  # batches summed per optimizer step (manual optimization)
                 ):
        super().__init__(ddconfig, lossconfig, image_key, colorize_nlabels, monitor, learning_rate,
                         accumulate_grad_batches)
        self.embed_dim = embed_dim
        self.n_embed = n_embed
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=VQ_BETA, remap=remap,
                                        sane_index_shape=sane_index_shape)
        self.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.batch_resize_range = None if batch_resize_range is None else tuple(batch_resize_range)
        if self.batch_resize_range is not None:
            logger.info("%s: Using per-batch resizing in range %s.", self.__class__.__name__, self.batch_resize_range)

        self.use_ema = use_ema
        if self.use_ema:
            from ldm.modules.ema import LitEma

            self.model_ema = LitEma(self)
            logger.info("Keeping EMAs of %d.", len(list(self.model_ema.buffers())))

        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)
        self.scheduler_config = _plain(scheduler_config)
        self.lr_g_factor = lr_g_factor

    @contextmanager
    def ema_scope(self, context: str | None = None) -> Iterator[None]:
        """Run the block with the EMA weights (when use_ema), restoring the training weights afterwards."""
        if self.use_ema:
            self.model_ema.store(self.parameters())
            self.model_ema.copy_to(self)
            if context is not None:
                logger.info("%s: Switched to EMA weights", context)
        try:
            yield None
        finally:
            if self.use_ema:
                self.model_ema.restore(self.parameters())
                if context is not None:
                    logger.info("%s: Restored training weights", context)

    def on_optimizers_stepped(self) -> None:
        """One EMA update per optimizer step, as `DDPM.optimizer_step`: a resumed run's EMA count is its step's."""
        if self.use_ema:
            self.model_ema(self)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """``(quant (B, embed_dim, h, w), codebook loss, (None, None, indices))``."""
        h = self.quant_conv(self.encoder(x))  # (B, embed_dim, h, w)
        return self.quantize(h)

    def encode_to_prequant(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))  # (B, embed_dim, h, w)

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))  # (B, out_ch, H, W)

    def decode_code(self, code_b: torch.Tensor) -> torch.Tensor:
        """Decode codebook indices ``(B, h, w)``."""
        b, h, w = code_b.shape
        quant_b = self.quantize.get_codebook_entry(code_b.reshape(-1), (b, h, w, self.embed_dim))  # (B, e, h, w)
        return self.decode(quant_b)

    def forward(self, input: torch.Tensor, return_pred_indices: bool = False) -> tuple:  # noqa: A002
        quant, diff, (_, _, ind) = self.encode(input)
        dec = self.decode(quant)  # (B, out_ch, H, W)
        if return_pred_indices:
            return dec, diff, ind
        return dec, diff

    def get_input(self, batch: Mapping[str, torch.Tensor], k: str) -> torch.Tensor:
        x = super().get_input(batch, k)
        if self.batch_resize_range is not None:
            lower_size, upper_size = self.batch_resize_range
            if self.batch_step <= RESIZE_WARMUP_STEPS:
                new_resize = upper_size
            else:
                new_resize = np.random.choice(np.arange(lower_size, upper_size + RESIZE_STRIDE, RESIZE_STRIDE))
            if new_resize != x.shape[2]:
                x = F.interpolate(x, size=int(new_resize), mode="bicubic")
            x = x.detach()
        return x

    def _reconstruct(self, x: torch.Tensor) -> tuple:
        return self(x, return_pred_indices=True)

    def _compute_loss(self, x: torch.Tensor, outputs: tuple, optimizer_idx: int, split: str,
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        xrec, qloss, ind = outputs
        return self.loss(qloss, x, xrec, optimizer_idx, self.batch_step, last_layer=self.get_last_layer(),
                         split=split, predicted_indices=ind)

    def _log_train(self, name: str, loss: torch.Tensor, log: dict[str, torch.Tensor], batch_size: int) -> None:
        self.log_dict(log, prog_bar=False, logger=True, on_step=True, on_epoch=True, batch_size=batch_size)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        x = self.get_input(batch, self.image_key)
        values = self._validation_values(x, "")
        self._log_validation(*values, suffix="", batch_size=x.shape[0])
        if self.use_ema:
            with self.ema_scope():
                values_ema = self._validation_values(x, "_ema")
        else:  # without EMA the "_ema" pass of the original gives the same numbers; log them without recomputing
            values_ema = (values[0], *({k.replace("val/", "val_ema/", 1): v for k, v in d.items()}
                                       for d in values[1:]))
        self._log_validation(*values_ema, suffix="_ema", batch_size=x.shape[0])
        return {**values[1], **values[2]}

    def _validation_values(self, x: torch.Tensor, suffix: str) -> tuple:
        outputs = self(x, return_pred_indices=True)
        aeloss, log_ae = self._compute_loss(x, outputs, 0, "val" + suffix)
        _, log_disc = self._compute_loss(x, outputs, 1, "val" + suffix)
        return aeloss, log_ae, log_disc

    def _log_validation(self, aeloss: torch.Tensor, log_ae: dict, log_disc: dict, suffix: str,
                        batch_size: int) -> None:
        log_ae = dict(log_ae)
        rec_loss = log_ae.pop(f"val{suffix}/rec_loss")
        self.log(f"val{suffix}/rec_loss", rec_loss, prog_bar=True, logger=True, on_step=False, on_epoch=True,
                 sync_dist=True, batch_size=batch_size)
        self.log(f"val{suffix}/aeloss", aeloss, prog_bar=True, logger=True, on_step=False, on_epoch=True,
                 sync_dist=True, batch_size=batch_size)
        self.log_dict(log_ae, batch_size=batch_size)
        self.log_dict(log_disc, batch_size=batch_size)

    def generator_parameters(self) -> list[torch.nn.Parameter]:
        return (list(self.encoder.parameters()) + list(self.decoder.parameters()) + list(self.quantize.parameters())
                + list(self.quant_conv.parameters()) + list(self.post_quant_conv.parameters()))

    def configure_optimizers(self) -> tuple[list, list]:
        lr_d = self.learning_rate
        lr_g = self.lr_g_factor * self.learning_rate
        logger.info("lr_d %s, lr_g %s", lr_d, lr_g)
        opt_ae, opt_disc = self._adam_pair(lr_g, lr_d)
        if self.scheduler_config is None:
            return [opt_ae, opt_disc], []
        schedule = instantiate_from_config(self.scheduler_config, where="model.params.scheduler_config")
        logger.info("Setting up LambdaLR scheduler...")
        schedulers = [{"scheduler": LambdaLR(opt, lr_lambda=schedule.schedule), "interval": "step", "frequency": 1}
                      for opt in (opt_ae, opt_disc)]
        return [opt_ae, opt_disc], schedulers

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, torch.Tensor], only_inputs: bool = False, plot_ema: bool = False,
                   **kwargs: Any) -> dict[str, torch.Tensor]:
        log = {}
        x = self.get_input(batch, self.image_key).to(self.device)
        if only_inputs:
            log["inputs"] = x
            return log
        xrec, _ = self(x)
        if x.shape[1] > 3:  # colorize with a random projection
            x = self.to_rgb(x)
            xrec = self.to_rgb(xrec)
        log["inputs"] = x
        log["reconstructions"] = xrec
        if plot_ema:
            with self.ema_scope():
                xrec_ema, _ = self(x)
                if x.shape[1] > 3:
                    xrec_ema = self.to_rgb(xrec_ema)
                log["reconstructions_ema"] = xrec_ema
        return log


class VQModelInterface(VQModel):
    """A `VQModel` as a latent diffusion first stage: ``encode`` gives the latents before quantization and
    ``decode`` quantizes them (unless ``force_not_quantize``) before decoding."""

    def __init__(self,
                 embed_dim: int,  # codebook vector dimension
                 *args: Any,  # the other VQModel parameters, positionally (ddconfig, lossconfig, n_embed)
                 **kwargs: Any,  # the other VQModel parameters by name
                 ):
        super().__init__(*args, embed_dim=embed_dim, **kwargs)
        self.embed_dim = embed_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))  # (B, embed_dim, h, w), not quantized

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        quant = h if force_not_quantize else self.quantize(h)[0]  # (B, embed_dim, h, w)
        return self.decoder(self.post_quant_conv(quant))  # (B, out_ch, H, W)


class AutoencoderKL(AdversarialAutoencoder):
    """The KL-regularized first stage: ``encode`` gives a diagonal Gaussian posterior, ``decode`` images."""

    def __init__(self,
                 ddconfig: Mapping[str, Any],  # Encoder/Decoder parameters; double_z must be true
                 lossconfig: Mapping[str, Any],  # {target, params} of the loss, e.g. LPIPSWithDiscriminator
                 embed_dim: int,  # latent channels
                 ckpt_path: str | None = None,  # checkpoint to initialize from
                 ignore_keys: Sequence[str] | None = None,  # key prefixes to drop from that checkpoint
                 image_key: str = "image",  # batch entry holding the images, (B, H, W, C)
                 colorize_nlabels: int | None = None,  # channels of segmentation inputs to colorize for logging
                 monitor: str | None = None,  # metric the checkpoint callback tracks
                 learning_rate: float = 4.5e-6,  # base learning rate; main.py sets it from base_learning_rate
                 accumulate_grad_batches: int = 1,  # batches summed per optimizer step (manual optimization)
                 ):
        if not ddconfig["double_z"]:
            raise ValueError("AutoencoderKL needs ddconfig.double_z: true (the encoder outputs mean and "
                             f"log-variance); got double_z={ddconfig['double_z']!r}")
        super().__init__(ddconfig, lossconfig, image_key, colorize_nlabels, monitor, learning_rate,
                         accumulate_grad_batches)
        self.quant_conv = torch.nn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.embed_dim = embed_dim
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)

    def encode(self, x: torch.Tensor):
        """The posterior ``q(z|x)``, a DiagonalGaussianDistribution over ``(B, embed_dim, h, w)``."""
        from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

        moments = self.quant_conv(self.encoder(x))  # (B, 2 embed_dim, h, w)
        return DiagonalGaussianDistribution(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))  # (B, out_ch, H, W)

    def forward(self, input: torch.Tensor, sample_posterior: bool = True) -> tuple:  # noqa: A002
        posterior = self.encode(input)
        z = posterior.sample() if sample_posterior else posterior.mode()  # (B, embed_dim, h, w)
        return self.decode(z), posterior

    def _reconstruct(self, x: torch.Tensor) -> tuple:
        return self(x)

    def _compute_loss(self, x: torch.Tensor, outputs: tuple, optimizer_idx: int, split: str,
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        reconstructions, posterior = outputs
        return self.loss(x, reconstructions, posterior, optimizer_idx, self.batch_step,
                         last_layer=self.get_last_layer(), split=split)

    def _log_train(self, name: str, loss: torch.Tensor, log: dict[str, torch.Tensor], batch_size: int) -> None:
        self.log(name, loss, prog_bar=True, logger=True, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log_dict(log, prog_bar=False, logger=True, on_step=True, on_epoch=False, batch_size=batch_size)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        x = self.get_input(batch, self.image_key)
        outputs = self(x)
        _, log_ae = self._compute_loss(x, outputs, 0, "val")
        _, log_disc = self._compute_loss(x, outputs, 1, "val")
        self.log_dict(log_ae, batch_size=x.shape[0])  # holds val/rec_loss, the monitored metric
        self.log_dict(log_disc, batch_size=x.shape[0])
        return {**log_ae, **log_disc}

    def generator_parameters(self) -> list[torch.nn.Parameter]:
        # as in the original, the loss's logvar is not optimized
        return (list(self.encoder.parameters()) + list(self.decoder.parameters())
                + list(self.quant_conv.parameters()) + list(self.post_quant_conv.parameters()))

    def configure_optimizers(self) -> tuple[list, list]:
        return self._adam_pair(self.learning_rate, self.learning_rate), []

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, torch.Tensor], only_inputs: bool = False,
                   **kwargs: Any) -> dict[str, torch.Tensor]:
        log = {}
        x = self.get_input(batch, self.image_key).to(self.device)
        if not only_inputs:
            xrec, posterior = self(x)
            if x.shape[1] > 3:  # colorize with a random projection
                x = self.to_rgb(x)
                xrec = self.to_rgb(xrec)
            log["samples"] = self.decode(torch.randn_like(posterior.sample()))
            log["reconstructions"] = xrec
        log["inputs"] = x
        return log


class IdentityFirstStage(torch.nn.Module):
    """A first stage that does nothing: for diffusion models working in pixel space."""

    def __init__(self, *args: Any,
                 vq_interface: bool = False,  # quantize returns (x, None, [None, None, None]) like a VQ model
                 **kwargs: Any):
        super().__init__()
        self.vq_interface = vq_interface

    def encode(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x

    def decode(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x

    def quantize(self, x: torch.Tensor, *args: Any, **kwargs: Any):
        if self.vq_interface:
            return x, None, [None, None, None]
        return x

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x
