"""Image logs of a latent diffusion model for the training callbacks (Rombach et al., CVPR 2022).

`LatentImageLoggingMixin.log_images` returns a dict of image batches / grids: inputs and their
first-stage reconstructions, the conditioning rendered as an image, a forward-diffusion row, samples
(DDIM by default), samples with a quantised x_0, inpainting and outpainting of a centre square, and a
progressive-denoising row of x_0 estimates.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from tqdm import tqdm

from ldm.models.autoencoder import AutoencoderKL, IdentityFirstStage
from ldm.util import isimage, ismap, log_txt_as_img


class LatentImageLoggingMixin:
    """`log_images` for `LatentDiffusion`."""

    def _get_denoise_row_from_list(self, samples: Sequence[torch.Tensor], desc: str = "",
                                   force_no_decoder_quantization: bool = False) -> torch.Tensor:
        """Decode each latent batch of ``samples`` and lay them out one row per batch element."""
        return self._get_rows_from_list([
            self.decode_first_stage(zd.to(self.device), force_not_quantize=force_no_decoder_quantization)
            for zd in tqdm(samples, desc=desc, disable=not desc)])

    def _conditioning_image(self, batch: Mapping[str, Any], x: torch.Tensor, c: Any, xc: Any,
                            log: dict[str, Any]) -> None:
        """Render the conditioning into ``log`` when it can be shown as an image."""
        decode = getattr(self.cond_stage_model, "decode", None)
        if callable(decode):
            xc = decode(c)
            log["conditioning"] = xc
        elif self.cond_stage_key == "caption":
            xc = log_txt_as_img((x.shape[2], x.shape[3]), batch["caption"])
            log["conditioning"] = xc
        elif self.cond_stage_key == "class_label" and "human_label" in batch:
            xc = log_txt_as_img((x.shape[2], x.shape[3]), batch["human_label"])
            log["conditioning"] = xc
        elif isimage(xc):
            log["conditioning"] = xc
        if ismap(xc):
            log["original_conditioning"] = self.to_rgb(xc)

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], N: int = 8, n_row: int = 4, sample: bool = True,
                   ddim_steps: int | None = 200, ddim_eta: float = 1.0, return_keys: Sequence[str] | None = None,
                   quantize_denoised: bool = True, inpaint: bool = True, plot_denoise_rows: bool = False,
                   plot_progressive_rows: bool = True, plot_diffusion_rows: bool = True,
                   **kwargs: Any) -> dict[str, torch.Tensor]:
        """Images for the logger; DDIM with ``ddim_steps`` steps (None: the full ancestral chain)."""
        use_ddim = ddim_steps is not None
        log = {}
        z, c, x, xrec, xc = self.get_input(batch, self.first_stage_key, return_first_stage_outputs=True,
                                           force_c_encode=True, return_original_cond=True, bs=N)
        N = min(x.shape[0], N)
        n_row = min(x.shape[0], n_row)
        log["inputs"] = x
        log["reconstruction"] = xrec
        if self.model.conditioning_key is not None:
            self._conditioning_image(batch, x, c, xc, log)

        if plot_diffusion_rows:
            log["diffusion_row"] = self._diffusion_row(z[:n_row], decode=self.decode_first_stage)

        if sample:
            with self.ema_scope("Plotting"):
                samples, z_denoise_row = self.sample_log(cond=c, batch_size=N, ddim=use_ddim,
                                                         ddim_steps=ddim_steps, eta=ddim_eta)
            log["samples"] = self.decode_first_stage(samples)
            if plot_denoise_rows:  # the states x_t along the way: DDIM returns them as intermediates["x_inter"]
                states = z_denoise_row["x_inter"] if isinstance(z_denoise_row, dict) else z_denoise_row
                log["denoise_row"] = self._get_denoise_row_from_list(states)

            if quantize_denoised and not isinstance(self.first_stage_model, (AutoencoderKL, IdentityFirstStage)):
                # samples whose x_0 estimate is quantised at every step
                with self.ema_scope("Plotting Quantized Denoised"):
                    samples, z_denoise_row = self.sample_log(cond=c, batch_size=N, ddim=use_ddim,
                                                             ddim_steps=ddim_steps, eta=ddim_eta,
                                                             quantize_denoised=True)
                log["samples_x0_quantized"] = self.decode_first_stage(samples.to(self.device))

            if inpaint:
                # a centre square to fill in (mask 0) with the rest known (mask 1)
                h, w = z.shape[2], z.shape[3]
                mask = torch.ones(N, h, w, device=self.device)
                mask[:, h // 4:3 * h // 4, w // 4:3 * w // 4] = 0.0
                mask = mask[:, None, ...]
                with self.ema_scope("Plotting Inpaint"):
                    samples, _ = self.sample_log(cond=c, batch_size=N, ddim=use_ddim, eta=ddim_eta,
                                                 ddim_steps=ddim_steps, x0=z[:N], mask=mask)
                log["samples_inpainting"] = self.decode_first_stage(samples.to(self.device))
                log["mask"] = mask

                outpaint_mask = 1.0 - mask  # keep the centre, generate the border
                with self.ema_scope("Plotting Outpaint"):
                    samples, _ = self.sample_log(cond=c, batch_size=N, ddim=use_ddim, eta=ddim_eta,
                                                 ddim_steps=ddim_steps, x0=z[:N], mask=outpaint_mask)
                log["samples_outpainting"] = self.decode_first_stage(samples.to(self.device))

        if plot_progressive_rows:
            with self.ema_scope("Plotting Progressives"):
                img, progressives = self.progressive_denoising(
                    c, shape=(self.channels, self.image_size, self.image_size), batch_size=N)
            log["progressive_row"] = self._get_denoise_row_from_list(progressives, desc="Progressive Generation")

        return self._select_keys(log, return_keys)
