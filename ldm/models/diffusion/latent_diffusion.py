"""`LatentDiffusion`: a DDPM in the latent space of a frozen autoencoder, with conditioning.

"High-Resolution Image Synthesis with Latent Diffusion Models" (Rombach et al., CVPR 2022): the
first stage (`FirstStageMixin`) maps images to a scaled latent space, the denoiser is trained there
(eq. 2; eq. 3 with conditioning from `ConditioningMixin`), and sampling runs the reverse process in
latent space before decoding. Large inputs can be processed crop by crop (`PatchwiseMixin`), and
training can drop the conditioning for classifier-free guidance (``ucg_rate``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
from einops import rearrange
from torch import nn

from ldm.models.diffusion.conditioning import ConditioningMixin
from ldm.models.diffusion.ddpm_module import DDPM, log_info
from ldm.models.diffusion.sampling import DDPMSampler, make_sampler, scaled_noise
from ldm.models.diffusion.first_stage import FirstStageMixin
from ldm.models.diffusion.image_logging import LatentImageLoggingMixin
from ldm.models.diffusion.patches import PatchwiseMixin
from ldm.util import UNCONDITIONAL_SENTINEL

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


def _take_each(cond: Any, n: int) -> Any:
    """Like `_take`, but a list is taken as a list of batched tensors (the samplers' convention)."""
    if isinstance(cond, Mapping):
        return {key: [c[:n] for c in value] if isinstance(value, list) else value[:n] for key, value in cond.items()}
    if isinstance(cond, list):
        return [c[:n] for c in cond]
    return cond[:n]


class LatentDiffusion(FirstStageMixin, PatchwiseMixin, ConditioningMixin, LatentImageLoggingMixin, DDPM):
    """The main class: conditional or unconditional diffusion in a first-stage latent space.

    Attributes beyond the constructor arguments' namesakes:

    - ``ucg_rate`` (float): during training (``self.training``), each element's raw conditioning is
      replaced by the null one with this probability before encoding, for classifier-free guidance;
      0.0 (the default, and the original behaviour) never replaces anything.
    - ``ucg_class`` (int or None): the null class index for class labels; None means the cond stage's
      last class (``n_classes - 1`` of a ClassEmbedder). Captions use ``""``.
      `get_unconditional_conditioning(batch_size)` returns the encoded null conditioning for sampling.
    - ``split_input_params`` (dict or None): switches on patch-wise processing (see `PatchwiseMixin`).
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
        x = DDPM.get_input(self, batch, self.first_stage_key).to(self.device)
        z = self.get_first_stage_encoding(self.encode_first_stage(x)).detach()
        scale = (1.0 / z.flatten().std()).to(self.scale_factor)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(scale, src=0)
        self.scale_factor.copy_(scale)
        log_info("### USING STD-RESCALING ### setting self.scale_factor to %s", float(self.scale_factor))

    # ------------------------------------------------------------------ data
    @torch.no_grad()
    def get_input(self, batch: Mapping[str, Any], k: str, return_first_stage_outputs: bool = False,
                  force_c_encode: bool = False, cond_key: str | None = None, return_original_cond: bool = False,
                  bs: int | None = None) -> list:
        """``[z, c]`` (+ ``[x, xrec]`` with return_first_stage_outputs, + ``[xc]`` with return_original_cond).

        z is the scaled latent of ``batch[k]``; c the conditioning, encoded unless the cond stage is
        trained (then encoding happens in `forward`) or ``force_c_encode``. In training mode the raw
        conditioning is first replaced by the null one with probability ``ucg_rate``.
        """
        x = DDPM.get_input(self, batch, k)
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
                xc = DDPM.get_input(self, batch, cond_key).to(self.device)
            if self.training and self.ucg_rate > 0.0:
                xc = self.drop_conditioning(xc)
            if not self.cond_stage_trainable or force_c_encode:
                if isinstance(xc, (Mapping, list, tuple)):
                    c = self.get_learned_conditioning(xc)
                else:
                    c = self.get_learned_conditioning(xc.to(self.device))
            else:
                c = xc
            if bs is not None:
                c = _take(c, bs)

        out = [z, c]
        if return_first_stage_outputs:
            out.extend([x, self.decode_first_stage(z)])
        if return_original_cond:
            out.append(xc)
        return out

    def shared_step(self, batch: Mapping[str, Any], **kwargs: Any):
        x, c = self.get_input(batch, self.first_stage_key)
        return self(x, c)

    def forward(self, x: torch.Tensor, c: Any, *args: Any, **kwargs: Any):
        t = torch.randint(0, self.num_timesteps, (x.shape[0],), device=self.device).long()
        if self.model.conditioning_key is not None:
            if c is None:
                raise ValueError(f"conditioning_key {self.model.conditioning_key!r} needs a conditioning; got None")
            if self.cond_stage_trainable:
                c = self.get_learned_conditioning(c)
            if self.shorten_cond_schedule:
                tc = self.cond_ids[t].to(self.device)
                c = self.q_sample(x_start=c, t=tc, noise=torch.randn_like(c.float()))
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
        ks = self._split_param("ks")
        stride = self._split_param("stride")
        h, w = x_noisy.shape[-2:]
        n_crops = self._num_crops(h, w, ks, stride)

        if self.cond_stage_key in SPATIAL_COND_KEYS and self.model.conditioning_key:
            c_key, c = next(iter(cond.items()))
            if len(c) != 1:
                raise ValueError(f"patch-wise apply_model crops one conditioning image; got {len(c)}")
            unfold = torch.nn.Unfold(kernel_size=ks, dilation=1, padding=0, stride=stride)
            c_crops = self._crops(unfold, c[0], ks)  # (B, C, kh, kw, L)
            cond_list = [{c_key: [c_crops[:, :, :, :, i]]} for i in range(n_crops)]
        elif self.cond_stage_key == "coordinates_bbox":
            cond_list = self._bbox_patch_conditioning(cond, ks, stride, w, n_crops)
        else:
            cond_list = [cond] * n_crops
        return self._patchwise(x_noisy, ks, stride, lambda i, crop: self.model(crop, t, **cond_list[i]))

    def _bbox_patch_conditioning(self, cond: dict, ks, stride, w: int, n_crops: int) -> list[dict]:
        """Re-tokenise the bounding-box conditioning for each crop's position (layout-to-image)."""
        if "original_image_size" not in self.split_input_params:
            raise ValueError("patch-wise bounding-box conditioning needs split_input_params['original_image_size'] "
                             "(set by encode_first_stage)")
        if self.bbox_tokenizer is None:
            raise ValueError("patch-wise bounding-box conditioning needs model.bbox_tokenizer; got None")
        if "c_crossattn" not in cond:
            raise ValueError(f"bounding-box conditioning must be given as c_crossattn; got keys {sorted(cond)}")
        n_patches_per_row = int((w - ks[0]) / stride[0] + 1)
        full_img_h, full_img_w = self.split_input_params["original_image_size"]
        rescale_latent = 2 ** (self.first_stage_model.encoder.num_resolutions - 1)
        # top-left corner, width and height of each crop, in (0, 1) image coordinates
        tl_patch_coordinates = [(rescale_latent * stride[0] * (patch_nr % n_patches_per_row) / full_img_w,
                                 rescale_latent * stride[1] * (patch_nr // n_patches_per_row) / full_img_h)
                                for patch_nr in range(n_crops)]
        patch_limits = [(x_tl, y_tl, rescale_latent * ks[0] / full_img_w, rescale_latent * ks[1] / full_img_h)
                        for x_tl, y_tl in tl_patch_coordinates]
        patch_limits_tknzd = [torch.LongTensor(self.bbox_tokenizer._crop_encoder(bbox))[None].to(self.device)
                              for bbox in patch_limits]  # each (1, 2)
        cut_cond = cond["c_crossattn"][0][..., :-2].to(self.device)  # drop the full-image crop tokens
        adapted_cond = torch.stack([torch.cat([cut_cond, p], dim=1) for p in patch_limits_tknzd])
        adapted_cond = rearrange(adapted_cond, "l b n -> (l b) n")
        adapted_cond = self.get_learned_conditioning(adapted_cond)
        adapted_cond = rearrange(adapted_cond, "(l b) n d -> l b n d", l=n_crops)
        return [{"c_crossattn": [e]} for e in adapted_cond]

    # ------------------------------------------------------------------ training objective
    def p_losses(self, x_start: torch.Tensor, cond: Any, t: torch.Tensor, noise: torch.Tensor | None = None):
        """Simple loss weighted by the (optionally learned) log-variance, plus the weighted bound."""
        if noise is None:
            noise = torch.randn_like(x_start)
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        model_output = self.apply_model(x_noisy, t, cond)

        prefix = "train" if self.training else "val"
        target = self._target(x_start, noise)
        loss_simple = self.get_loss(model_output, target, mean=False).mean([1, 2, 3])  # (B,)
        loss_dict = {f"{prefix}/loss_simple": loss_simple.mean()}

        logvar_t = self.logvar[t].to(self.device)
        loss = loss_simple / torch.exp(logvar_t) + logvar_t
        if self.learn_logvar:
            loss_dict[f"{prefix}/loss_gamma"] = loss.mean()
            loss_dict["logvar"] = self.logvar.data.mean()
        loss = self.l_simple_weight * loss.mean()

        loss_vlb = (self.lvlb_weights[t] * loss_simple).mean()
        loss_dict[f"{prefix}/loss_vlb"] = loss_vlb
        loss = loss + self.original_elbo_weight * loss_vlb
        loss_dict[f"{prefix}/loss"] = loss
        return loss, loss_dict

    # ------------------------------------------------------------------ ancestral sampling
    def _noisy_cond(self, cond: Any, ts: torch.Tensor) -> Any:
        """With a shortened conditioning schedule, the conditioning diffused to level ``cond_ids[ts]``."""
        if not self.shorten_cond_schedule:
            return cond
        if self.model.conditioning_key == "hybrid":
            raise ValueError("num_timesteps_cond > 1 cannot be combined with conditioning_key 'hybrid'")
        return self.q_sample(x_start=cond, t=self.cond_ids[ts].to(cond.device), noise=torch.randn_like(cond))

    def _ancestral(self, cond: Any, shape: Sequence[int], x_T: torch.Tensor | None, steps: int | None,
                   verbose: bool, callback=None, img_callback=None, mask: torch.Tensor | None = None,
                   x0: torch.Tensor | None = None, quantize_denoised: bool = False,
                   temperature: float | Sequence[float] = 1.0, noise_dropout: float = 0.0,
                   score_corrector: Any = None, corrector_kwargs: dict | None = None, log_every_t: int | None = None):
        """Ancestral sampling (`DDPMSampler`) from step ``steps - 1`` down to 0; returns (img, intermediates).
        ``callback(t)`` and ``img_callback(img, t)`` see the training step t; ``temperature`` may be per step."""
        sampler = DDPMSampler(self)
        steps = min(steps or self.num_timesteps, self.num_timesteps)
        denoiser = sampler.denoiser(cond, quantize_x0=quantize_denoised, score_corrector=score_corrector,
                                    corrector_kwargs=corrector_kwargs)
        denoiser.model_fn = lambda x, t, c: self.apply_model(x, t, self._noisy_cond(c, t))
        temperatures = [float(temperature)] * steps if isinstance(temperature, (int, float)) else temperature

        def hook(i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            if callback:
                callback(steps - 1 - i)
            if img_callback:
                img_callback(x, steps - 1 - i)

        x = torch.randn(shape, device=self.betas.device) if x_T is None else x_T
        return sampler.run(denoiser, x, sampler.sigmas(None)[self.num_timesteps - steps:], eta=1.0, mask=mask, x0=x0,
                           noise=lambda x, i: scaled_noise(temperatures[steps - 1 - i], noise_dropout)(x, i),
                           hook=hook, log_every_t=log_every_t or self.log_every_t, verbose=verbose)

    @torch.no_grad()
    def progressive_denoising(self, cond: Any, shape: Sequence[int], verbose: bool = True, callback=None,
                              quantize_denoised: bool = False, img_callback=None, mask: torch.Tensor | None = None,
                              x0: torch.Tensor | None = None, temperature: float | Sequence[float] = 1.0,
                              noise_dropout: float = 0.0, score_corrector: Any = None,
                              corrector_kwargs: dict | None = None, batch_size: int | None = None,
                              x_T: torch.Tensor | None = None, start_T: int | None = None,
                              log_every_t: int | None = None):
        """Ancestral sampling that records the x_0 estimates along the way; returns (img, intermediates)."""
        if batch_size is not None:
            shape = [batch_size] + list(shape)
        cond = _take_each(cond, shape[0]) if cond is not None else None
        img, intermediates = self._ancestral(cond, shape, x_T, start_T, verbose, callback, img_callback, mask, x0,
                                             quantize_denoised, temperature, noise_dropout, score_corrector,
                                             corrector_kwargs, log_every_t)
        return img, intermediates["pred_x0"][1:]

    @torch.no_grad()
    def p_sample_loop(self, cond: Any, shape: Sequence[int], return_intermediates: bool = False,
                      x_T: torch.Tensor | None = None, verbose: bool = True, callback=None,
                      timesteps: int | None = None, quantize_denoised: bool = False, mask: torch.Tensor | None = None,
                      x0: torch.Tensor | None = None, img_callback=None, start_T: int | None = None,
                      log_every_t: int | None = None):
        """Ancestral sampling (Ho et al., Algorithm 2) in latent space; ``mask`` keeps known regions of ``x0``."""
        steps = min(timesteps or self.num_timesteps, start_T or self.num_timesteps)
        img, intermediates = self._ancestral(cond, shape, x_T, steps, verbose, callback, img_callback, mask, x0,
                                             quantize_denoised, log_every_t=log_every_t)
        return (img, intermediates["x_inter"]) if return_intermediates else img

    @torch.no_grad()
    def sample(self, cond: Any, batch_size: int = 16, return_intermediates: bool = False,
               x_T: torch.Tensor | None = None, verbose: bool = True, timesteps: int | None = None,
               quantize_denoised: bool = False, mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
               shape: Sequence[int] | None = None, **kwargs: Any):
        """Ancestral samples of ``shape`` (default (batch_size, channels, image_size, image_size))."""
        if shape is None:
            shape = (batch_size, self.channels, self.image_size, self.image_size)
        if cond is not None:
            cond = _take_each(cond, batch_size)
        return self.p_sample_loop(cond, shape, return_intermediates=return_intermediates, x_T=x_T, verbose=verbose,
                                  timesteps=timesteps, quantize_denoised=quantize_denoised, mask=mask, x0=x0)

    @torch.no_grad()
    def sample_log(self, cond: Any, batch_size: int, ddim: bool, ddim_steps: int | None, **kwargs: Any):
        """Samples and intermediates for logging: DDIM with ``ddim_steps`` steps, or the full ancestral chain."""
        if ddim:
            shape = (self.channels, self.image_size, self.image_size)
            return make_sampler("ddim", self).sample(ddim_steps, batch_size, shape, cond, verbose=False, **kwargs)
        return self.sample(cond=cond, batch_size=batch_size, return_intermediates=True, **kwargs)

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
