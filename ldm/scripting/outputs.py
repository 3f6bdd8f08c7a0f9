"""Outputs of the command-line tools: decoding samples to images, saving images, grids and arrays
atomically, numbering files in an output folder like the original scripts, and a summary of what was
written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ldm.util import atomic_path

#: The longest grid file name made from a prompt (file systems allow 255 bytes).
MAX_PROMPT_FILENAME = 200


def decode_to_unit(model: torch.nn.Module, samples: torch.Tensor) -> torch.Tensor:
    """Decode latents (or pass pixel samples through) and map [-1, 1] to [0, 1]."""
    decode = getattr(model, "decode_first_stage", None)
    x = decode(samples) if decode is not None else samples
    return torch.clamp((x + 1.0) / 2.0, min=0.0, max=1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, C) uint8, truncating like the original scripts (255 * x, astype)."""
    arr = 255.0 * x.detach().float().cpu().numpy().transpose(1, 2, 0)
    return arr.astype(np.uint8)


def save_array_image(arr: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W[, C]) uint8 array as PNG through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return Path(path)


def save_npz(path: str | os.PathLike, *arrays: np.ndarray) -> Path:
    """``np.savez(path, *arrays)`` (keys ``arr_0``, ...) through a temporary file and a rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, *arrays)
    return Path(path)


def save_image(x: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save a (C, H, W) image in [0, 1] as PNG, atomically."""
    return save_array_image(to_uint8(x), path)


def save_grid(images: torch.Tensor | Sequence[torch.Tensor], path: str | os.PathLike, nrow: int) -> Path:
    """Save a torchvision grid of (N, C, H, W) images in [0, 1] (or a list of such batches) atomically."""
    from torchvision.utils import make_grid

    batch = torch.cat(list(images), 0) if not isinstance(images, torch.Tensor) else images
    return save_image(make_grid(batch, nrow=nrow), path)


def prompt_filename(prompt: str) -> str:
    """The original's grid name for a prompt (spaces -> '-'), made safe as one file name."""
    name = prompt.replace(" ", "-").replace(os.sep, "-")
    if os.altsep:
        name = name.replace(os.altsep, "-")
    name = name.encode("utf-8")[:MAX_PROMPT_FILENAME].decode("utf-8", errors="ignore")
    return (name or "empty-prompt") + ".png"


def prepare_outdir(outdir: str | os.PathLike) -> tuple[str, int, int]:
    """Create ``<outdir>/samples``; returns its path and the numbers the next sample and the next grid
    get, so that repeated runs into one folder add files instead of overwriting them (as the original)."""
    sample_path = os.path.join(outdir, "samples")
    os.makedirs(sample_path, exist_ok=True)
    return sample_path, count_entries(sample_path), count_entries(outdir) - 1


def count_entries(folder: str | os.PathLike) -> int:
    """Entries in ``folder`` (0 if it does not exist): the original scripts' running file index."""
    return len(os.listdir(folder)) if os.path.isdir(folder) else 0


class OutputSummary:
    """Collects what a script wrote and prints one summary at the end."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def add(self, path: str | os.PathLike) -> Path:
        self.paths.append(Path(path))
        return Path(path)

    def lines(self) -> list[str]:
        by_dir: dict[Path, list[Path]] = {}
        for p in self.paths:
            by_dir.setdefault(p.parent, []).append(p)
        out = [f"wrote {len(self.paths)} file(s):"]
        for folder, files in by_dir.items():
            total = sum(f.stat().st_size for f in files if f.exists())
            names = ", ".join(f.name for f in files[:3]) + (", ..." if len(files) > 3 else "")
            out.append(f"  {folder}/: {len(files)} file(s), {total / 1024:.1f} KiB ({names})")
        return out

    def print(self) -> None:
        print("\n".join(self.lines()))
