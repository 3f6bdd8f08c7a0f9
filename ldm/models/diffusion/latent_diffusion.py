"""`LatentDiffusion`: a DDPM in the latent space of a frozen autoencoder, with conditioning.

"High-Resolution Image Synthesis with Latent Diffusion Models" (Rombach et al., CVPR 2022): the
first stage (`first_stage`) maps images to a scaled latent space, the denoiser is trained there
(eq. 2; eq. 3 with the conditioning of `conditioning`), and sampling runs the reverse process in
latent space before decoding. Large inputs can be processed crop by crop (`patches`), and training
can drop the conditioning for classifier-free guidance (``ucg_rate``).

A training step: `DDPM.training_step` -> ``shared_step`` -> `encode_batch` (a `LatentBatch`) -> ``forward``
-> ``p_losses`` -> `GaussianDiffusion.training_losses` over ``apply_model`` (`DiffusionWrapper`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
from einops import rearrange
from torch import nn

from ldm.models.diffusion import conditioning, first_stage, patches
from ldm.models.diffusion.ddpm_module import DDPM, log_info
from ldm.util import UNCONDITIONAL_SENTINEL, channels_first, instantiate_from_config

#: ``cond_stage_key`` values whose conditioning is an image cropped alongside the latent in patch-wise mode.
SPATIAL_COND_KEYS = ("image", "LR_image", "segmentation", "bbox_img")


def _num_downs(first_stage_config: Any) -> int:
    """Number of down-sampling steps of the first stage, read from its ``ddconfig.ch_mult`` (0 if absent)."""
    try:
        return len(first_stage_config["params"]["ddconfig"]["ch_mult"]) - 1
    except (KeyError, TypeError):
        return 0


def _take(c: Any, n: int) -> Any:
    """The first ``n`` batch entries of a conditioning (a dict is sliced value by value)."""
    if isinstance(c, Mapping):
        return {key: _take(value, n) for key, value in c.items()}
    return c[:n]


@dataclass
class LatentBatch:
    """A batch as the latent model sees it."""

    z: torch.Tensor  # (B, C, h, w) scaled latents of the images
    c: Any  # the conditioning: encoded, or raw when the cond stage trains (None when unconditional)
    x: torch.Tensor | None = None  # (B, 3, H, W) the images, with first_stage_outputs
    xrec: torch.Tensor | None = None  # (B, 3, H, W) their first-stage reconstructions, with first_stage_outputs
    xc: Any = None  # the raw conditioning, before encoding

    def as_list(self, first_stage_outputs: bool = False, original_cond: bool = False) -> list:
        """The original ``get_input`` return value: [z, c] (+ [x, xrec]) (+ [xc])."""
        return [self.z, self.c] + ([self.x, self.xrec] if first_stage_outputs else []) + (
            [self.xc] if original_cond else [])


class LatentDiffusion(DDPM):
    """The main class: conditional or unconditional diffusion in a first-stage latent space.

    Attributes beyond the constructor arguments' namesakes:

    - ``ucg_rate`` (float): during training (``self.training``), each element's raw conditioning is
      replaced by the null one with this probability before encoding, for classifier-free guidance;
      0.0 (the default, and the original behaviour) never replaces anything.
    - ``ucg_class`` (int or None): the null class index for class labels; None means the cond stage's
      last class (``n_classes - 1`` of a ClassEmbedder). Captions use ``""``.
      `get_unconditional_conditioning(batch_size)` returns the encoded null conditioning for sampling.
    - ``split_input_params`` (dict or None): switches on patch-wise processing (see `patches`).
    - ``scale_factor``: a float, or a buffer (saved in checkpoints) when ``scale_by_std``.
    """

    def __init__(
        self,
        first_stage_config: Mapping[str, Any],  # {target, params} of the frozen autoencoder
        cond_stage_config: Mapping[str, Any] | str,  # {target, params}, "__is_first_stage__" or "__is_unconditional__"
        num_timesteps_cond: int | None = None,  # > 1: also diffuse the conditioning (the cond_ids schedule)
        cond_stage_key: str | None = "image",  # batch key of the conditioning
        cond_stage_trainable: bool = False,  # train the cond stage jointly (conditioning encoded in forward)
        concat_mode: bool = True,  # without conditioning_key: True -> "concat", False -> "crossattn"
        cond_stage_forward: str | None = None,  # name of the cond-stage method to encode with
        conditioning_key: str | None = None,  # None, "concat", "crossattn", "hybrid" or "adm"
        scale_factor: float = 1.0,  # latents are multiplied by this (1 / their std; 0.18215 for kl-f8)
        scale_by_std: bool = False,  # set scale_factor to 1 / std of the first training batch's latents
        ucg_rate: float = 0.0,  # classifier-free guidance training: probability of the null conditioning
        ucg_class: int | None = None,  # null class index for class labels (default: the embedder's last class)
        **kwargs: Any,  # the DDPM parameters (unet_config, timesteps, ...)
    ) -> None:
        self.num_timesteps_cond = 1 if num_timesteps_cond is None else num_timesteps_cond
        self.scale_by_std = scale_by_std
        if conditioning_key is None:  # the configs written before DiffusionWrapper existed
            conditioning_key = "concat" if concat_mode else "crossattn"
        if cond_stage_config == UNCONDITIONAL_SENTINEL:
            conditioning_key = None
        if kwargs.get("use_positional_encodings"):
            raise ValueError("use_positional_encodings=True is not supported by LatentDiffusion "
                             "(the original never implemented its latent shifts); got True")
        if not 0.0 <= ucg_rate <= 1.0:
            raise ValueError(f"ucg_rate must be a probability in [0, 1]; got {ucg_rate!r}")
        if ucg_rate > 0.0 and cond_stage_config == UNCONDITIONAL_SENTINEL:
            raise ValueError(f"ucg_rate={ucg_rate!r} needs a conditioned model; got cond_stage_config "
                             f"{UNCONDITIONAL_SENTINEL!r}")
        ckpt_path = kwargs.pop("ckpt_path", None)  # loaded below, once the first stage exists
        ignore_keys = kwargs.pop("ignore_keys", None)
        super().__init__(conditioning_key=conditioning_key, **kwargs)
        self.concat_mode = concat_mode
        self.cond_stage_trainable = cond_stage_trainable
        self.cond_stage_key = cond_stage_key
        self.ucg_rate = float(ucg_rate)
        self.ucg_class = ucg_class
        self.num_downs = _num_downs(first_stage_config)
        if not scale_by_std:
            self.scale_factor = scale_factor
        else:
            self.register_buffer("scale_factor", torch.tensor(scale_factor))
        self.split_input_params: dict[str, Any] | None = None  # set to a dict to process crop by crop
        self.instantiate_first_stage(first_stage_config)
        self.instantiate_cond_stage(cond_stage_config)
        self.cond_stage_forward = cond_stage_forward
        self.clip_denoised = False
        self.bbox_tokenizer = None  # layout-to-image: set to the dataset's tokenizer for patch-wise sampling
        self.colorize: torch.Tensor | None = None  # random projection used by `to_rgb`

        self.restarted_from_ckpt = False
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys)
            self.restarted_from_ckpt = True

    # ------------------------------------------------------------------ schedules
    def make_cond_schedule(self) -> None:
        """``cond_ids[t]``: the noise level of the conditioning at step t (num_timesteps_cond levels)."""
        cond_ids = torch.full(size=(self.num_timesteps,), fill_value=self.num_timesteps - 1, dtype=torch.long)
        ids = torch.round(torch.linspace(0, self.num_timesteps - 1, self.num_timesteps_cond)).long()
        cond_ids[: self.num_timesteps_cond] = ids
        self.register_buffer("cond_ids", cond_ids, persistent=False)

    def register_schedule(self, given_betas=None, beta_schedule: str = "linear", timesteps: int = 1000,
                          linear_start: float = 1e-4, linear_end: float = 2e-2, cosine_s: float = 8e-3) -> None:
        super().register_schedule(given_betas, beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        if not 1 <= self.num_timesteps_cond <= self.num_timesteps:
            raise ValueError(f"num_timesteps_cond must be in [1, timesteps={self.num_timesteps}]; "
                             f"got {self.num_timesteps_cond!r}")
        self.shorten_cond_schedule = self.num_timesteps_cond > 1
        if self.shorten_cond_schedule:
            self.make_cond_schedule()

    @torch.no_grad()
    def on_train_batch_start(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """With ``scale_by_std``: on the very first batch, set scale_factor to 1 / std of the latents.

        Under DDP every rank encodes its batch and rank 0's value is broadcast, so the buffer is the
        same everywhere.
        """
        if not (self.scale_by_std and self.current_epoch == 0 and self.global_step == 0 and batch_idx == 0
                and not self.restarted_from_ckpt):
            return
        if float(self.scale_factor) != 1.0:
            raise ValueError(f"scale_by_std computes scale_factor itself; do not also give scale_factor "
                             f"(got {float(self.scale_factor)})")
        x = channels_first(batch[self.first_stage_key]).to(self.device)
        z = self.get_first_stage_encoding(self.encode_first_stage(x)).detach()
        scale = (1.0 / z.flatten().std()).to(self.scale_factor)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(scale, src=0)
        self.scale_factor.copy_(scale)
        log_info("### USING STD-RESCALING ### setting self.scale_factor to %s", float(self.scale_factor))

    # ------------------------------------------------------------------ first stage (`first_stage`)
    def instantiate_first_stage(self, config: Mapping[str, Any]) -> None:
        """Build the autoencoder frozen: eval mode for good, no gradients."""
        self.first_stage_model = first_stage.freeze(
            instantiate_from_config(config, where="model.params.first_stage_config"))

    def get_first_stage_encoding(self, encoder_posterior: Any) -> torch.Tensor:
        """Scaled latent: a sample of a KL posterior, or the VQ encoder output as is."""
        return first_stage.first_stage_encoding(encoder_posterior, self.scale_factor)

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor) -> Any:
        """Image -> encoder output (a posterior for KL models, a latent tensor for VQ), unscaled."""
        return first_stage.encode(self.first_stage_model, x, self.split_input_params)

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor, predict_cids: bool = False,
                           force_not_quantize: bool = False) -> torch.Tensor:
        """Latent (B, C, h, w) -> image (B, 3, H, W), without gradients."""
        return self.differentiable_decode_first_stage(z, predict_cids, force_not_quantize)

    def differentiable_decode_first_stage(self, z: torch.Tensor, predict_cids: bool = False,
                                          force_not_quantize: bool = False) -> torch.Tensor:
        """`decode_first_stage` with gradients flowing to ``z`` (e.g. for guidance through the decoder)."""
        return first_stage.decode(self.first_stage_model, z, self.scale_factor, self.split_input_params,
                                  predict_cids=predict_cids, force_not_quantize=force_not_quantize)

    def quantize_latent(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` snapped to the codebook of a VQ first stage (an x0 estimate quantized while sampling)."""
        return first_stage.quantize_latent(self.first_stage_model, z)

    # ------------------------------------------------------------------ conditioning (`conditioning`)
    def instantiate_cond_stage(self, config: Mapping[str, Any] | str) -> None:
        """Build the conditioning encoder; frozen (eval, no gradients) unless ``cond_stage_trainable``."""
        self.cond_stage_model = conditioning.instantiate_cond_stage(config, self.cond_stage_trainable,
                                                                    self.first_stage_model)

    def get_learned_conditioning(self, c: Any) -> Any:
        """Encode raw conditioning with the cond stage (its ``encode``, ``cond_stage_forward`` or call)."""
        return conditioning.encode_conditioning(self.cond_stage_model, c, self.cond_stage_forward)

    def unconditional_class(self) -> int:
        """The class index standing for "no class": ``ucg_class``, else the embedder's last index."""
        return conditioning.unconditional_class(self.cond_stage_model, self.ucg_class)

    def drop_conditioning(self, xc: Any) -> Any:
        """Replace each element of the raw conditioning by the null one with probability ``ucg_rate``."""
        return conditioning.drop_conditioning(xc, self.ucg_rate, self._embedder_key(), self.unconditional_class)

    def _embedder_key(self) -> str | None:
        return conditioning.embedder_key(self.cond_stage_model, self.cond_stage_key)

    @torch.no_grad()
    def get_unconditional_conditioning(self, batch_size: int, device: torch.device | None = None) -> Any:
        """The encoded null conditioning for a batch, in the form the samplers take for guidance."""
        device = device if device is not None else self.device
        if isinstance(getattr(self.cond_stage_model, "embedding", None), nn.Embedding):
            labels = torch.full((batch_size,), self.unconditional_class(), device=device, dtype=torch.long)
            return self.get_learned_conditioning({self._embedder_key(): labels})
        return self.get_learned_conditioning([conditioning.UNCONDITIONAL_CAPTION] * batch_size)

    # ------------------------------------------------------------------ data
    @torch.no_grad()
    def encode_batch(self, batch: Mapping[str, Any], k: str | None = None, force_c_encode: bool = False,
                     first_stage_outputs: bool = False, cond_key: str | None = None,
                     bs: int | None = None) -> LatentBatch:
        """The latents of ``batch[k]`` (default: ``first_stage_key``) and the conditioning, as a `LatentBatch`.

        The conditioning is encoded unless the cond stage is trained (then encoding happens in `forward`) or
        ``force_c_encode``. In training mode the raw conditioning is first replaced by the null one with
        probability ``ucg_rate``. ``first_stage_outputs`` also returns the images and their reconstructions.
        """
        x = channels_first(batch[k or self.first_stage_key])
        if bs is not None:
            x = x[:bs]
        x = x.to(self.device)
        z = self.get_first_stage_encoding(self.encode_first_stage(x)).detach()

        c = xc = None
        if self.model.conditioning_key is not None:
            cond_key = self.cond_stage_key if cond_key is None else cond_key
            if cond_key == self.first_stage_key:
                xc = x
            elif cond_key in ("caption", "coordinates_bbox"):
                xc = batch[cond_key]
            elif cond_key == "class_label":
                xc = batch
            else:
                xc = channels_first(batch[cond_key]).to(self.device)
            if self.training and self.ucg_rate > 0.0:
                xc = self.drop_conditioning(xc)
            if not self.cond_stage_trainable or force_c_encode:
                c = self.get_learned_conditioning(xc if isinstance(xc, (Mapping, list, tuple)) else xc.to(self.device))
            else:
                c = xc
            if bs is not None:
                c = _take(c, bs)
        xrec = self.decode_first_stage(z) if first_stage_outputs else None
        return LatentBatch(z, c, x if first_stage_outputs else None, xrec, xc)

    def get_input(self, batch: Mapping[str, Any], k: str, return_first_stage_outputs: bool = False,
                  force_c_encode: bool = False, cond_key: str | None = None, return_original_cond: bool = False,
                  bs: int | None = None) -> list:
        """The original's list form of `encode_batch`: ``[z, c]`` (+ ``[x, xrec]`` with
        return_first_stage_outputs, + ``[xc]`` with return_original_cond)."""
        inputs = self.encode_batch(batch, k, force_c_encode, return_first_stage_outputs, cond_key, bs)
        return inputs.as_list(return_first_stage_outputs, return_original_cond)

    def shared_step(self, batch: Mapping[str, Any], **kwargs: Any):
        inputs = self.encode_batch(batch)
        return self(inputs.z, inputs.c)

    def forward(self, x: torch.Tensor, c: Any, *args: Any, **kwargs: Any):
        t = torch.randint(0, self.num_timesteps, (x.shape[0],), device=self.device).long()
        if self.model.conditioning_key is not None:
            if c is None:
                raise ValueError(f"conditioning_key {self.model.conditioning_key!r} needs a conditioning; got None")
            if self.cond_stage_trainable:
                c = self.get_learned_conditioning(c)
            if self.shorten_cond_schedule:
                c = self.diffusion.diffuse_conditioning(c, t, torch.randn_like(c.float()))
        return self.p_losses(x, c, t, *args, **kwargs)

    # ------------------------------------------------------------------ the denoiser
    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any, return_ids: bool = False):
        """Denoiser output for ``x_noisy`` at ``t``; ``cond`` is a tensor, a list, or a {c_concat, c_crossattn} dict."""
        if not isinstance(cond, dict):
            if not isinstance(cond, list):
                cond = [cond]
            key = "c_concat" if self.model.conditioning_key == "concat" else "c_crossattn"
            cond = {key: cond}

        if self.split_input_params is not None:
            x_recon = self._apply_model_patchwise(x_noisy, t, cond, return_ids)
        else:
            x_recon = self.model(x_noisy, t, **cond)

        if isinstance(x_recon, tuple) and not return_ids:
            return x_recon[0]
        return x_recon

    def _apply_model_patchwise(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict, return_ids: bool):
        if len(cond) != 1:
            raise ValueError(f"patch-wise apply_model handles one conditioning entry; got keys {sorted(cond)}")
        if return_ids:
            raise ValueError("patch-wise apply_model cannot return codebook ids; got return_ids=True")
        params = self.split_input_params
        ks, stride = patches.split_param(params, "ks"), patches.split_param(params, "stride")
        h, w = x_noisy.shape[-2:]
        n_crops = patches.num_crops(h, w, ks, stride)

        if self.cond_stage_key in SPATIAL_COND_KEYS and self.model.conditioning_key:
            c_key, c = next(iter(cond.items()))
            if len(c) != 1:
                raise ValueError(f"patch-wise apply_model crops one conditioning image; got {len(c)}")
            unfold = torch.nn.Unfold(kernel_size=ks, dilation=1, padding=0, stride=stride)
            c_crops = patches.crops(unfold, c[0], ks)  # (B, C, kh, kw, L)
            cond_list = [{c_key: [c_crops[:, :, :, :, i]]} for i in range(n_crops)]
        elif self.cond_stage_key == "coordinates_bbox":
            tokens = patches.bbox_patch_conditioning(
                params, cond, ks, stride, w, n_crops, self.bbox_tokenizer,
                2 ** (self.first_stage_model.encoder.num_resolutions - 1), self.device)  # (L, B, N)
            encoded = self.get_learned_conditioning(rearrange(tokens, "l b n -> (l b) n"))
            cond_list = [{"c_crossattn": [e]} for e in rearrange(encoded, "(l b) n d -> l b n d", l=n_crops)]
        else:
            cond_list = [cond] * n_crops
        return patches.patchwise(params, x_noisy, ks, stride, lambda i, crop: self.model(crop, t, **cond_list[i]))

    def meshgrid(self, h: int, w: int) -> torch.Tensor:
        """(h, w, 2) grid of integer (y, x) coordinates (`patches.meshgrid`)."""
        return patches.meshgrid(h, w)

    def delta_border(self, h: int, w: int) -> torch.Tensor:
        """(h, w) normalised distance to the nearest border (`patches.delta_border`)."""
        return patches.delta_border(h, w)

    def get_weighting(self, h: int, w: int, Ly: int, Lx: int, device: torch.device) -> torch.Tensor:
        """(1, h * w, Ly * Lx) blending weights of every pixel of every crop (`patches.get_weighting`)."""
        return patches.get_weighting(self.split_input_params, h, w, Ly, Lx, device)

    def get_fold_unfold(self, x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
                        uf: int = 1, df: int = 1):
        """Fold, unfold, normalization and weighting for crops of ``x`` (`patches.get_fold_unfold`)."""
        return patches.get_fold_unfold(self.split_input_params, x, kernel_size, stride, uf=uf, df=df)

    # ------------------------------------------------------------------ training objective
    def p_losses(self, x_start: torch.Tensor, cond: Any, t: torch.Tensor, noise: torch.Tensor | None = None):
        """Simple loss weighted by the (optionally learned) log-variance, plus the weighted bound."""
        return self.diffusion.training_losses(lambda x, steps: self.apply_model(x, steps, cond), x_start, t, noise,
                                              logvar=self.logvar, log_logvar=self.learn_logvar,
                                              prefix=self._log_prefix())

    # ------------------------------------------------------------------ the original sampling methods
    # They are functions of the model in `entry_points`, imported when called so that the model does not
    # depend on the samplers.
    @torch.no_grad()
    def progressive_denoising(self, cond: Any, shape: Sequence[int], *args: Any, **kwargs: Any):
        """Ancestral sampling that records the x_0 estimates along the way; returns (img, intermediates)."""
        from ldm.models.diffusion.entry_points import progressive_denoising
        return progressive_denoising(self, cond, shape, *args, **kwargs)

    @torch.no_grad()
    def p_sample_loop(self, cond: Any, shape: Sequence[int], *args: Any, **kwargs: Any):
        """Ancestral sampling (Ho et al., Algorithm 2) in latent space; ``mask`` keeps known regions of ``x0``."""
        from ldm.models.diffusion.entry_points import p_sample_loop
        return p_sample_loop(self, cond, shape, *args, **kwargs)

    @torch.no_grad()
    def sample(self, cond: Any, batch_size: int = 16, *args: Any, **kwargs: Any):
        """Ancestral samples of ``shape`` (default (batch_size, channels, image_size, image_size))."""
        from ldm.models.diffusion.entry_points import sample
        return sample(self, cond, batch_size, *args, **kwargs)

    @torch.no_grad()
    def sample_log(self, cond: Any, batch_size: int, ddim: bool, ddim_steps: int | None, **kwargs: Any):
        """Samples and intermediates for logging: DDIM with ``ddim_steps`` steps, or the full ancestral chain."""
        from ldm.models.diffusion.entry_points import sample_log
        return sample_log(self, cond, batch_size, ddim, ddim_steps, **kwargs)

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], N: int = 8, n_row: int = 4, sample: bool = True,
                   ddim_steps: int | None = 200, ddim_eta: float = 1.0, return_keys: Sequence[str] | None = None,
                   quantize_denoised: bool = True, inpaint: bool = True, plot_denoise_rows: bool = False,
                   plot_progressive_rows: bool = True, plot_diffusion_rows: bool = True,
                   **kwargs: Any) -> dict[str, torch.Tensor]:
        """Images for the logger (`image_logging.log_latent_images`); DDIM with ``ddim_steps`` steps (None: the
        full ancestral chain)."""
        from ldm.models.diffusion.image_logging import log_latent_images
        return log_latent_images(self, batch, N=N, n_row=n_row, sample=sample, ddim_steps=ddim_steps,
                                 ddim_eta=ddim_eta, return_keys=return_keys, quantize_denoised=quantize_denoised,
                                 inpaint=inpaint, plot_denoise_rows=plot_denoise_rows,
                                 plot_progressive_rows=plot_progressive_rows, plot_diffusion_rows=plot_diffusion_rows)

    # ------------------------------------------------------------------ optimisation and display
    def _trainable_parameters(self) -> list[torch.Tensor]:
        params = list(self.model.parameters())
        if self.cond_stage_trainable:
            log_info("%s: Also optimizing conditioner params!", self.__class__.__name__)
            params = params + list(self.cond_stage_model.parameters())
        if self.learn_logvar:
            log_info("Diffusion model optimizing logvar")
            params.append(self.logvar)
        return params

    @torch.no_grad()
    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Map a multi-channel map to 3 channels in [-1, 1] with a fixed random projection."""
        x = x.float()
        if self.colorize is None or self.colorize.shape[1] != x.shape[1]:
            self.colorize = torch.randn(3, x.shape[1], 1, 1).to(x)
        x = nn.functional.conv2d(x, weight=self.colorize.to(x))
        return 2.0 * (x - x.min()) / (x.max() - x.min()) - 1.0
