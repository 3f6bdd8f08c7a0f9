"""`DDPM`: the pixel-space denoising diffusion model as a Lightning module.

"Denoising Diffusion Probabilistic Models" (Ho et al., NeurIPS 2020): training on the simple
noise-prediction loss (eq. 14) plus an optional weighted variational bound, and ancestral sampling
(Algorithm 2). It is the base class of `LatentDiffusion` (Rombach et al., CVPR 2022), which runs the
same process in the latent space of a first-stage autoencoder.

The module owns the network (``model``, a `DiffusionWrapper`), its EMA, the schedule buffers under the
original names, and the Lightning hooks; the process itself (noising, loss, denoiser) is the
`GaussianDiffusion` of ``gaussian_diffusion``, which ``self.diffusion`` builds over those buffers.
Image logging is `image_logging.log_ddpm_images`; the original sampling methods call `entry_points`.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ldm.checkpoint import restore_weights
from ldm.models.diffusion.gaussian_diffusion import (SCHEDULE_BUFFERS, GaussianDiffusion, schedule_buffers,
                                                    validate_loss_type, validate_parameterization)
from ldm.models.diffusion.wrapper import DiffusionWrapper
from ldm.modules.diffusionmodules.util import make_beta_schedule
from ldm.modules.ema import LitEma
from ldm.util import channels_first, count_params, instantiate_from_config

logger = logging.getLogger(__name__)

#: Learning rate used when nothing (such as ``main.py``) sets ``model.learning_rate``.
DEFAULT_LEARNING_RATE = 1.0e-4


def log_info(msg: str, *args: Any) -> None:
    """`logging.info` on the global rank 0 process only."""
    if rank_zero_only.rank == 0:
        logger.info(msg, *args)


def uniform_on_device(r1: float, r2: float, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """Uniform samples from the interval between ``r2`` and ``r1``, drawn on ``device``."""
    return (r1 - r2) * torch.rand(*shape, device=device) + r2


class DDPM(pl.LightningModule):
    """Classic DDPM with Gaussian diffusion in image space (fixed variance schedule)."""

    shorten_cond_schedule = False  # a diffused conditioning (LatentDiffusion with num_timesteps_cond > 1)

    def __init__(
        self,
        unet_config: Mapping[str, Any],  # {target, params} of the denoising network
        timesteps: int = 1000,  # number of diffusion steps T
        beta_schedule: str = "linear",  # linear, cosine, sqrt_linear or sqrt (see make_beta_schedule)
        loss_type: str = "l2",  # "l1" or "l2" distance between prediction and target
        ckpt_path: str | None = None,  # checkpoint to initialise from (.ckpt, .pt or .safetensors)
        ignore_keys: Sequence[str] | None = None,  # state-dict key prefixes to skip when loading ckpt_path
        load_only_unet: bool = False,  # load ckpt_path into the wrapped network (`self.model`) only
        monitor: str | None = "val/loss",  # metric name for checkpointing callbacks
        use_ema: bool = True,  # keep an exponential moving average of the network weights
        first_stage_key: str = "image",  # batch key of the images
        image_size: int = 256,  # spatial size of the generated samples
        channels: int = 3,  # channels of the generated samples
        log_every_t: int = 100,  # keep every this many steps of a sampling chain for logging
        clip_denoised: bool = True,  # clamp the predicted x_0 to [-1, 1] while sampling
        linear_start: float = 1e-4,  # first beta of the linear-type schedules
        linear_end: float = 2e-2,  # last beta of the linear-type schedules
        cosine_s: float = 8e-3,  # offset s of the cosine schedule (Nichol & Dhariwal)
        given_betas: Sequence[float] | None = None,  # explicit betas; overrides beta_schedule and timesteps
        original_elbo_weight: float = 0.0,  # weight of the variational-bound term in the loss
        v_posterior: float = 0.0,  # posterior variance sigma^2 = (1 - v) * beta_tilde + v * beta
        l_simple_weight: float = 1.0,  # weight of the simple (unweighted) loss
        conditioning_key: str | None = None,  # None, "concat", "crossattn", "hybrid" or "adm"
        parameterization: str = "eps",  # network predicts "eps" (the noise) or "x0" (the clean sample)
        scheduler_config: Mapping[str, Any] | None = None,  # {target, params} of an ldm.lr_scheduler object
        use_positional_encodings: bool = False,  # kept for config compatibility; unused in pixel space
        learn_logvar: bool = False,  # learn a per-timestep log-variance weighting of the loss
        logvar_init: float = 0.0,  # initial value of that log-variance
    ) -> None:
        super().__init__()
        self.parameterization = validate_parameterization(parameterization)
        self.loss_type = validate_loss_type(loss_type)
        log_info("%s: Running in %s-prediction mode", self.__class__.__name__, self.parameterization)
        self.cond_stage_model = None
        self.clip_denoised = clip_denoised
        self.log_every_t = log_every_t
        self.first_stage_key = first_stage_key
        self.image_size = image_size
        self.channels = channels
        self.use_positional_encodings = use_positional_encodings
        self.model = DiffusionWrapper(unet_config, conditioning_key)
        count_params(self.model, verbose=True)
        self.use_ema = use_ema
        if self.use_ema:
            self.model_ema = LitEma(self.model)
            log_info("Keeping EMAs of %d.", len(list(self.model_ema.buffers())))

        self.use_scheduler = scheduler_config is not None
        self.scheduler_config = scheduler_config
        self.learning_rate = DEFAULT_LEARNING_RATE

        self.v_posterior = v_posterior
        self.original_elbo_weight = original_elbo_weight
        self.l_simple_weight = l_simple_weight

        if monitor is not None:
            self.monitor = monitor
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, only_model=load_only_unet)

        self.register_schedule(given_betas=given_betas, beta_schedule=beta_schedule, timesteps=timesteps,
                               linear_start=linear_start, linear_end=linear_end, cosine_s=cosine_s)

        # per-timestep log-variance of the loss weighting: a parameter when learned, otherwise a
        # non-persistent buffer (so it follows the device but stays out of the state dict, as originally)
        self.learn_logvar = learn_logvar
        logvar = torch.full(fill_value=logvar_init, size=(self.num_timesteps,))
        if self.learn_logvar:
            self.logvar = nn.Parameter(logvar, requires_grad=True)
        else:
            self.register_buffer("logvar", logvar, persistent=False)

    # ------------------------------------------------------------------ the process
    def register_schedule(self, given_betas: Sequence[float] | None = None, beta_schedule: str = "linear",
                          timesteps: int = 1000, linear_start: float = 1e-4, linear_end: float = 2e-2,
                          cosine_s: float = 8e-3) -> None:
        """Register the schedule buffers (`schedule_buffers`: float64 maths stored as float32, as the original).

        The numbers are computed on the CPU; the buffers go to the device of the module's parameters
        (or the default device), so a model built under ``torch.device("meta")`` gets meta buffers; parameters
        that alone are on the meta device (``ldm.scripting.loading.parameters_on_meta``) leave them real.
        """
        with torch.device("cpu"):
            betas = given_betas if given_betas is not None else make_beta_schedule(
                beta_schedule, timesteps, linear_start=linear_start, linear_end=linear_end, cosine_s=cosine_s)
            buffers = schedule_buffers(betas, self.v_posterior, self.parameterization)
        first_param = next(self.parameters(), None)
        device = (first_param.device if first_param is not None and not first_param.is_meta
                  else torch.get_default_device())
        for name, value in buffers.items():
            self.register_buffer(name, value.to(device), persistent=name != "lvlb_weights")
        self.num_timesteps = int(buffers["betas"].shape[0])
        self.linear_start = linear_start
        self.linear_end = linear_end

    @property
    def diffusion(self) -> GaussianDiffusion:
        """The diffusion process over this module's schedule buffers (wherever they are now) and options."""
        return GaussianDiffusion({name: getattr(self, name) for name in SCHEDULE_BUFFERS},
                                 parameterization=self.parameterization, loss_type=self.loss_type,
                                 l_simple_weight=self.l_simple_weight, original_elbo_weight=self.original_elbo_weight,
                                 v_posterior=self.v_posterior, clip_denoised=self.clip_denoised,
                                 cond_ids=self.cond_ids if self.shorten_cond_schedule else None)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) (`GaussianDiffusion.q_sample`)."""
        return self.diffusion.q_sample(x_start, t, noise)

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_0 from x_t and the predicted noise (`GaussianDiffusion.predict_start_from_noise`)."""
        return self.diffusion.predict_start_from_noise(x_t, t, noise)

    # ------------------------------------------------------------------ weights
    @contextmanager
    def ema_scope(self, context: str | None = None) -> Iterator[None]:
        """Within the block the network holds its EMA weights (when ``use_ema``); restored afterwards."""
        if self.use_ema:
            self.model_ema.store(self.model.parameters())
            self.model_ema.copy_to(self.model)
            if context is not None:
                log_info("%s: Switched to EMA weights", context)
        try:
            yield None
        finally:
            if self.use_ema:
                self.model_ema.restore(self.model.parameters())
                if context is not None:
                    log_info("%s: Restored training weights", context)

    def init_from_ckpt(self, path: str, ignore_keys: Sequence[str] | None = None, only_model: bool = False) -> None:
        """Load a checkpoint non-strictly (after dropping ``ignore_keys`` prefixes) and log what was missing."""
        restore_weights(self.model if only_model else self, path, ignore_keys, log=log_info)

    # ------------------------------------------------------------------ reverse process
    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """The network's output (eps or x0, per ``parameterization``) for ``x_noisy`` at steps ``t``."""
        if cond is not None:
            raise ValueError(f"{type(self).__name__} is unconditional; got a conditioning of type "
                             f"{type(cond).__name__}")
        return self.model(x_noisy, t)

    def quantize_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Codebook quantization of an x0 estimate; a pixel-space model has no codebook."""
        raise ValueError(f"{type(self).__name__} has no VQ first stage to quantize with; leave quantize_x0 off")

    # The original sampling methods. They live in `entry_points` as functions of the model, imported here when
    # called, so that the model does not depend on the samplers.
    @torch.no_grad()
    def p_sample_loop(self, shape: Sequence[int], return_intermediates: bool = False, verbose: bool = True):
        """Ancestral sampling from pure noise of ``shape`` (`DDPMSampler`, one `torch.randn` a step as the original)."""
        from ldm.models.diffusion.entry_points import pixel_p_sample_loop
        return pixel_p_sample_loop(self, shape, return_intermediates, verbose)

    @torch.no_grad()
    def sample(self, batch_size: int = 16, return_intermediates: bool = False):
        """``batch_size`` samples of shape (channels, image_size, image_size)."""
        return self.p_sample_loop((batch_size, self.channels, self.image_size, self.image_size),
                                  return_intermediates=return_intermediates)

    # ------------------------------------------------------------------ training objective
    def get_loss(self, pred: torch.Tensor, target: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """The l1 or l2 distance, averaged when ``mean`` else element-wise."""
        loss = self.diffusion.distance(pred, target)
        return loss.mean() if mean else loss

    def _log_prefix(self) -> str:
        return "train" if self.training else "val"

    def p_losses(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None):
        """Simple loss plus ``original_elbo_weight`` times the weighted bound; returns (loss, loss_dict)."""
        return self.diffusion.training_losses(self.model, x_start, t, noise, prefix=self._log_prefix())

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any):
        t = torch.randint(0, self.num_timesteps, (x.shape[0],), device=x.device).long()
        return self.p_losses(x, t, *args, **kwargs)

    def get_input(self, batch: Mapping[str, Any], k: str) -> torch.Tensor:
        """``batch[k]`` as a float (B, C, H, W) tensor; the data loaders deliver (B, H, W[, C])."""
        return channels_first(batch[k])

    def shared_step(self, batch: Mapping[str, Any]):
        x = self.get_input(batch, self.first_stage_key)
        return self(x)

    def _batch_size(self, batch: Mapping[str, Any]) -> int | None:
        x = batch.get(self.first_stage_key) if isinstance(batch, Mapping) else None
        return int(x.shape[0]) if isinstance(x, torch.Tensor) else None

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, loss_dict = self.shared_step(batch)
        bs = self._batch_size(batch)
        self.log_dict(loss_dict, prog_bar=True, logger=True, on_step=True, on_epoch=True, batch_size=bs)
        self.log("global_step", float(self.global_step), prog_bar=True, logger=True, on_step=True, on_epoch=False,
                 batch_size=bs)
        if self.use_scheduler:
            lr = self.optimizers().param_groups[0]["lr"]
            self.log("lr_abs", lr, prog_bar=True, logger=True, on_step=True, on_epoch=False, batch_size=bs)
        return loss

    @torch.no_grad()
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Logs the losses of the current weights and, under ``_ema`` names, of the EMA weights."""
        bs = self._batch_size(batch)
        _, loss_dict_no_ema = self.shared_step(batch)
        with self.ema_scope():
            _, loss_dict_ema = self.shared_step(batch)
            loss_dict_ema = {key + "_ema": value for key, value in loss_dict_ema.items()}
        self.log_dict(loss_dict_no_ema, prog_bar=False, logger=True, on_step=False, on_epoch=True, batch_size=bs)
        self.log_dict(loss_dict_ema, prog_bar=False, logger=True, on_step=False, on_epoch=True, batch_size=bs)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA update: one EMA update per optimizer step, made before any
        callback can write a checkpoint of this step, so a resumed run's EMA count equals its global step."""
        super().optimizer_step(*args, **kwargs)
        if self.use_ema:
            self.model_ema(self.model)

    def _trainable_parameters(self) -> list[torch.Tensor]:
        params = list(self.model.parameters())
        if self.learn_logvar:
            params.append(self.logvar)
        return params

    def configure_optimizers(self):
        """AdamW at ``self.learning_rate``; with ``scheduler_config`` a per-step `LambdaLR` on top."""
        opt = torch.optim.AdamW(self._trainable_parameters(), lr=self.learning_rate)
        if not self.use_scheduler:
            return opt
        schedule = instantiate_from_config(self.scheduler_config, where="model.params.scheduler_config")
        log_info("Setting up LambdaLR scheduler...")
        scheduler = [{"scheduler": LambdaLR(opt, lr_lambda=schedule.schedule), "interval": "step", "frequency": 1}]
        return [opt], scheduler

    # ------------------------------------------------------------------ logging
    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], N: int = 8, n_row: int = 2, sample: bool = True,
                   return_keys: Sequence[str] | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Inputs, a forward-diffusion row, and (with ``sample``) EMA samples with their denoising row."""
        from ldm.models.diffusion.image_logging import log_ddpm_images
        return log_ddpm_images(self, batch, N=N, n_row=n_row, sample=sample, return_keys=return_keys)
