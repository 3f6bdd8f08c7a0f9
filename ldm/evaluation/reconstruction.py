"""The columns of the first-stage table (Rombach et al., CVPR 2022, "Pretrained Autoencoding Models"):
rFID (FID between a dataset and its reconstructions), PSNR, SSIM and LPIPS (the table's PSIM).

Images are resized (shorter side, bicubic) and centre-cropped to ``size`` x ``size``, reconstructed
deterministically (the posterior mode for KL autoencoders, the quantized code for VQ ones), and
quantized to uint8 as a saved reconstruction would be. PSNR is over 8-bit values, SSIM over [0, 1],
LPIPS (VGG, Zhang et al. 2018) over [-1, 1]; each is a mean +- standard deviation over images.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ldm.evaluation import metrics as M
from ldm.evaluation.inception import POOL_FEATURES, InceptionFeatures
from ldm.evaluation.image_sets import find_images
from ldm.pixels import to_uint8

logger = logging.getLogger(__name__)


def dataset_images(folder: str | Path, size: int, limit: int | None = None) -> list[str]:
    """The image files of ``folder`` (checked: it exists and holds images), at most ``limit`` of them."""
    p = Path(folder)
    if not p.is_dir():
        raise FileNotFoundError(f"--images {p}: not a folder (expected a folder of .png/.jpg images)")
    files = find_images(p)
    if not files:
        raise ValueError(f"--images {p}: the folder holds no .png/.jpg/.jpeg image")
    if size <= 0:
        raise ValueError(f"--size must be > 0; got {size}")
    return files[:limit] if limit else files


def load_square(path: str, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the shorter side resized to ``size`` (bicubic), then centre-cropped."""
    im = Image.open(path).convert("RGB")
    scale = size / min(im.size)
    im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def batches(files: list[str], size: int, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(files), batch_size):
        arr = np.stack([load_square(f, size) for f in files[start:start + batch_size]])
        yield torch.from_numpy(arr).permute(0, 3, 1, 2)  # (B, 3, size, size) uint8


@torch.no_grad()
def reconstruct(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Deterministic reconstruction of (B, 3, H, W) images in [-1, 1]."""
    from ldm.models.autoencoder import AutoencoderKL

    if isinstance(model, AutoencoderKL):
        return model.decode(model.encode(x).mode())
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


def perceptual_metric(model: torch.nn.Module, vgg_path: str | None, lpips_path: str | None) -> torch.nn.Module:
    """The LPIPS of the model's loss when its checkpoint supplied the weights, else one read from files now."""
    from ldm.modules.losses.lpips import LPIPS

    lpips = getattr(getattr(model, "loss", None), "perceptual_loss", None)
    if isinstance(lpips, LPIPS) and not lpips.pending_pretrained and vgg_path is None and lpips_path is None:
        logger.info("LPIPS weights from the checkpoint (loss.perceptual_loss)")
        return lpips.eval()
    lpips = LPIPS(vgg_path=vgg_path, lpips_path=lpips_path)
    lpips.load_pretrained()  # a missing weights file is reported now, before any image is read
    return lpips.eval()


@torch.no_grad()
def evaluate_autoencoder(model: torch.nn.Module, files: list[str], size: int, batch_size: int = 16,
                         extractor: InceptionFeatures | None = None, lpips: torch.nn.Module | None = None,
                         progress: bool = True) -> dict[str, Any]:
    """rFID (when ``extractor``), PSNR, SSIM and LPIPS (when ``lpips``) of ``files`` and their reconstructions."""
    device = next(model.parameters()).device
    warnings = []
    if extractor is not None:
        reason = M.fid_undefined_reason(len(files), 2048)
        if reason:
            warnings.append(f"rFID: {reason}; the figure is computed but is not a valid FID")
            logger.warning(warnings[-1])
    psnr, ssim, lp, real_f, rec_f = [], [], [], [], []
    for x8 in tqdm(batches(files, size, batch_size), total=-(-len(files) // batch_size), desc="reconstructing",
                   unit="batch", disable=not progress):
        x = x8.to(device).float() / 127.5 - 1
        rec8 = to_uint8(reconstruct(model, x), nearest=True)
        psnr.append(M.psnr(x8.float(), rec8.cpu().float(), data_range=255.0))
        ssim.append(M.ssim(x8.float() / 255, rec8.cpu().float() / 255))
        if lpips is not None:
            lp.append(lpips(x, rec8.float() / 127.5 - 1).flatten().cpu())
        if extractor is not None:
            real_f.append(extractor([x8], len(x8), progress=False)[POOL_FEATURES])
            rec_f.append(extractor([rec8.cpu()], len(x8), progress=False)[POOL_FEATURES])
    psnr_t, ssim_t = torch.cat(psnr), torch.cat(ssim)
    out: dict[str, Any] = {
        "rfid": None, "psnr": float(psnr_t.mean()), "psnr_std": float(psnr_t.std(unbiased=False)),
        "ssim": float(ssim_t.mean()), "ssim_std": float(ssim_t.std(unbiased=False)), "lpips": None, "lpips_std": None,
        "num_images": len(files), "size": size, "warnings": warnings,
    }
    if lp:
        lp_t = torch.cat(lp)
        out["lpips"], out["lpips_std"] = float(lp_t.mean()), float(lp_t.std(unbiased=False))
    if extractor is not None:
        out["rfid"] = M.frechet_distance(M.feature_statistics(torch.cat(real_f)), M.feature_statistics(torch.cat(rec_f)))
    return out
