"""Outputs of the command-line tools: decoding samples to images, saving images, grids and arrays
atomically, numbering files in an output folder like the original scripts, and a summary of what was
written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ldm import pixels
from ldm.checkpoint import atomic_path

#: The longest grid file name made from a prompt (file systems allow 255 bytes).
MAX_PROMPT_FILENAME = 200


def decode(model: torch.nn.Module, samples: torch.Tensor) -> torch.Tensor:
    """Latents decoded by the model's first stage (pixel samples of a model without one pass through), in [-1, 1]."""
    first_stage = getattr(model, "decode_first_stage", None)
    return first_stage(samples) if first_stage is not None else samples


def decode_to_unit(model: torch.nn.Module, samples: torch.Tensor) -> torch.Tensor:
    """Decode latents (or pass pixel samples through) and map [-1, 1] to [0, 1]."""
    return torch.clamp((decode(model, samples) + 1.0) / 2.0, min=0.0, max=1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, C) uint8, truncating like the original scripts (`ldm.pixels.to_uint8`)."""
    return pixels.to_uint8_hwc(x, low=0.0)


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


def check_outdir(outdir: str | os.PathLike, flag: str = "--outdir") -> Path:
    """Create ``outdir`` and make sure this process can write there, before any model is loaded; a
    ValueError names the flag, the folder and the reason otherwise."""
    import tempfile

    path = Path(outdir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {os.fspath(outdir)!r} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{flag} {os.fspath(outdir)!r} cannot be written: {err.strerror or err}") from None
    return path


def claim(folder: str | os.PathLike, name: Callable[[int], str], start: int = 0) -> tuple[Path, int]:
    """The first free file name ``name(i)`` in ``folder`` for i >= ``start``, created empty with O_EXCL so
    that no other process can take it (concurrent runs into one folder never overwrite each other's
    files), and the index used. The caller then writes the file atomically over the placeholder."""
    i = max(start, 0)
    while True:
        path = Path(folder) / name(i)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path, i
        except FileExistsError:
            i += 1


def claim_unique(path: str | os.PathLike) -> Path:
    """``path``, or ``<stem>-1<suffix>``, ``<stem>-2<suffix>``, ... if taken, created empty with O_EXCL."""
    path = Path(path)
    claimed, _ = claim(path.parent, lambda i: path.name if i == 0 else f"{path.stem}-{i}{path.suffix}")
    return claimed


def claim_dir(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` (parents as needed), or ``<path>-1``, ``<path>-2``, ... if it exists:
    mkdir is atomic, so two runs started in the same second get two folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    i = 0
    while True:
        candidate = path if i == 0 else path.with_name(f"{path.name}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            i += 1


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


class SampleFolder:
    """An output folder laid out as the original sampling scripts': samples in ``<outdir>/samples/``, grids
    as ``<outdir>/grid-NNNN.png``. Numbers continue after the entries already there, so that repeated runs
    into one folder add files (as the original); each name is claimed before it is written (`claim`), so
    that a name another run holds is skipped, never overwritten. ``summary`` records every file written."""

    def __init__(self, outdir: str | os.PathLike):  # the folder; created with its samples/ folder
        self.outdir = os.fspath(outdir)
        self.sample_path = os.path.join(self.outdir, "samples")
        os.makedirs(self.sample_path, exist_ok=True)
        self.next_sample = count_entries(self.sample_path)
        self.next_grid = count_entries(self.outdir) - 1  # samples/ is not a grid
        self.summary = OutputSummary()

    def save_samples(self, images: torch.Tensor, name: Callable[[int], str] = "{:04}.png".format) -> None:
        """Save each (C, H, W) image in [0, 1] of ``images`` in the samples folder as the next free ``name(i)``."""
        for image in images:
            path, i = claim(self.sample_path, name, self.next_sample)
            self.summary.add(save_image(image, path))
            self.next_sample = i + 1

    def save_grid(self, images: torch.Tensor | Sequence[torch.Tensor], nrow: int) -> Path:
        """Save the grid of ``images`` (`save_grid`) as the next free ``grid-NNNN.png`` of the folder."""
        path, i = claim(self.outdir, "grid-{:04}.png".format, self.next_grid)
        self.next_grid = i + 1
        return self.summary.add(save_grid(images, path, nrow))
