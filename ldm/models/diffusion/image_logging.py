"""Image logs of the diffusion models for the training callbacks, as functions of the model.

`log_ddpm_images` (pixel space) and `log_latent_images` (latent diffusion, Rombach et al., CVPR 2022) return a
dict of image batches / grids: inputs (and their first-stage reconstructions), the conditioning rendered as an
image, a forward-diffusion row, samples (DDIM by default), samples with a quantised x_0, inpainting and
outpainting of a centre square, and denoising rows. The models' ``log_images`` methods call them.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from einops import rearrange
from torchvision.utils import make_grid
from tqdm import tqdm

from ldm.models.autoencoder import AutoencoderKL, IdentityFirstStage
from ldm.models.diffusion import entry_points
from ldm.util import isimage, ismap, log_txt_as_img


def rows_from_list(samples: Sequence[torch.Tensor]) -> torch.Tensor:
    """A grid with one row per batch element and one column per entry of ``samples`` (each (B, C, H, W))."""
    denoise_grid = rearrange(torch.stack(list(samples)), "n b c h w -> (b n) c h w")
    return make_grid(denoise_grid, nrow=len(samples))


def diffusion_row(model: Any, x_start: torch.Tensor,
                  decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The forward-diffusion grid of ``x_start`` (B, C, H, W): a draw of q(x_t | x_0) every ``log_every_t``
    steps and at the last step, each passed through ``decode`` when given (a latent model's first stage)."""
    process, row = model.diffusion, []
    for t in range(model.num_timesteps):
        if t % model.log_every_t == 0 or t == model.num_timesteps - 1:
            steps = torch.full((x_start.shape[0],), t, device=x_start.device, dtype=torch.long)
            x_t = process.q_sample(x_start, steps, torch.randn_like(x_start))
            row.append(x_t if decode is None else decode(x_t))
    return rows_from_list(row)


def select_keys(log: dict[str, Any], return_keys: Sequence[str] | None) -> dict[str, Any]:
    """``log`` restricted to ``return_keys`` (all of it when none of them is present)."""
    if not return_keys or not set(log) & set(return_keys):
        return log
    return {key: log[key] for key in return_keys}


@torch.no_grad()
def log_ddpm_images(model: Any, batch: Mapping[str, Any], N: int = 8, n_row: int = 2, sample: bool = True,
                    return_keys: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Inputs, a forward-diffusion row, and (with ``sample``) EMA samples with their denoising row."""
    x = model.get_input(batch, model.first_stage_key)
    N = min(x.shape[0], N)
    n_row = min(x.shape[0], n_row)
    x = x.to(model.device)[:N]
    log = {"inputs": x, "diffusion_row": diffusion_row(model, x[:n_row])}
    if sample:
        with model.ema_scope("Plotting"):
            samples, denoise_row = model.sample(batch_size=N, return_intermediates=True)
        log["samples"] = samples
        log["denoise_row"] = rows_from_list(denoise_row)
    return select_keys(log, return_keys)


def _decoded_rows(model: Any, samples: Sequence[torch.Tensor], desc: str = "") -> torch.Tensor:
    """Decode each latent batch of ``samples`` and lay them out one row per batch element."""
    return rows_from_list([model.decode_first_stage(z.to(model.device)) for z in tqdm(samples, desc=desc,
                                                                                       disable=not desc)])


def _conditioning_images(model: Any, batch: Mapping[str, Any], x: torch.Tensor, c: Any, xc: Any) -> dict[str, Any]:
    """The conditioning drawn as images, when it can be shown as one."""
    log = {}
    decode = getattr(model.cond_stage_model, "decode", None)
    if callable(decode):
        xc = log["conditioning"] = decode(c)
    elif model.cond_stage_key == "caption":
        xc = log["conditioning"] = log_txt_as_img((x.shape[2], x.shape[3]), batch["caption"])
    elif model.cond_stage_key == "class_label" and "human_label" in batch:
        xc = log["conditioning"] = log_txt_as_img((x.shape[2], x.shape[3]), batch["human_label"])
    elif isimage(xc):
        log["conditioning"] = xc
    if ismap(xc):
        log["original_conditioning"] = model.to_rgb(xc)
    return log


@torch.no_grad()
def log_latent_images(model: Any, batch: Mapping[str, Any], N: int = 8, n_row: int = 4, sample: bool = True,
                      ddim_steps: int | None = 200, ddim_eta: float = 1.0, return_keys: Sequence[str] | None = None,
                      quantize_denoised: bool = True, inpaint: bool = True, plot_denoise_rows: bool = False,
                      plot_progressive_rows: bool = True, plot_diffusion_rows: bool = True) -> dict[str, torch.Tensor]:
    """The logs of a `LatentDiffusion`; DDIM with ``ddim_steps`` steps (None: the full ancestral chain)."""
    use_ddim = ddim_steps is not None
    inputs = model.encode_batch(batch, force_c_encode=True, first_stage_outputs=True, bs=N)
    z, c, x = inputs.z, inputs.c, inputs.x
    N = min(x.shape[0], N)
    n_row = min(x.shape[0], n_row)
    log = {"inputs": x, "reconstruction": inputs.xrec}
    if model.model.conditioning_key is not None:
        log.update(_conditioning_images(model, batch, x, c, inputs.xc))

    if plot_diffusion_rows:
        log["diffusion_row"] = diffusion_row(model, z[:n_row], decode=model.decode_first_stage)

    def sample_log(context: str, **kwargs: Any):
        with model.ema_scope(context):
            return entry_points.sample_log(model, cond=c, batch_size=N, ddim=use_ddim, ddim_steps=ddim_steps,
                                           eta=ddim_eta, **kwargs)

    if sample:
        samples, z_denoise_row = sample_log("Plotting")
        log["samples"] = model.decode_first_stage(samples)
        if plot_denoise_rows:  # the states x_t along the way: DDIM returns them as intermediates["x_inter"]
            states = z_denoise_row["x_inter"] if isinstance(z_denoise_row, dict) else z_denoise_row
            log["denoise_row"] = _decoded_rows(model, states)

        if quantize_denoised and not isinstance(model.first_stage_model, (AutoencoderKL, IdentityFirstStage)):
            samples, _ = sample_log("Plotting Quantized Denoised", quantize_denoised=True)
            log["samples_x0_quantized"] = model.decode_first_stage(samples.to(model.device))

        if inpaint:
            # a centre square to fill in (mask 0) with the rest known (mask 1)
            h, w = z.shape[2], z.shape[3]
            mask = torch.ones(N, h, w, device=model.device)
            mask[:, h // 4:3 * h // 4, w // 4:3 * w // 4] = 0.0
            mask = mask[:, None, ...]
            samples, _ = sample_log("Plotting Inpaint", x0=z[:N], mask=mask)
            log["samples_inpainting"] = model.decode_first_stage(samples.to(model.device))
            log["mask"] = mask
            samples, _ = sample_log("Plotting Outpaint", x0=z[:N], mask=1.0 - mask)  # keep the centre
            log["samples_outpainting"] = model.decode_first_stage(samples.to(model.device))

    if plot_progressive_rows:
        with model.ema_scope("Plotting Progressives"):
            _, progressives = entry_points.progressive_denoising(
                model, c, shape=(model.channels, model.image_size, model.image_size), batch_size=N)
        log["progressive_row"] = _decoded_rows(model, progressives, desc="Progressive Generation")

    return select_keys(log, return_keys)
