"""Image sets to evaluate: a folder of images, the ``.npz`` that the sampling scripts write, or the
reference batches of ADM's evaluation suite (Dhariwal & Nichol 2021: ``arr_0`` with the images as
``(N, H, W, 3)`` uint8, and precomputed Inception statistics ``mu``/``sigma``, and ``mu_s``/``sigma_s``
of the spatial features for sFID, when present).

:func:`open_image_set` checks a set before any feature is extracted: it exists, holds images, and
all of them have one size (read from the file headers, without decoding). A folder is read as
torch-fidelity reads one (``.png``, ``.jpg``, ``.jpeg`` directly inside it, sorted by path, converted
to RGB), so that the figures match torch-fidelity's on the same folder.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

#: Extensions of the images read from a folder (torch-fidelity's default ``samples_find_ext``).
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")
#: Extensions torch-fidelity warns about: lossy compression changes the features.
LOSSY_EXTENSIONS = ("jpg", "jpeg")
#: What a set may be, for error messages.
EXPECTED = "a folder of .png/.jpg/.jpeg images or an .npz file with images as arr_0 (N, H, W, 3) uint8"


@dataclass
class ImageSet:
    """A checked set of images; ``batches`` yields uint8 ``(B, 3, H, W)`` tensors."""

    path: Path                                   # the folder or .npz it came from
    what: str                                    # the option that named it ("--samples", "--reference")
    size: tuple[int, int]                        # (height, width) of every image
    modes: dict[str, int]                        # image modes and how many images have each
    files: list[str] | None = None               # a folder's image files, in torch-fidelity's order
    array: np.ndarray | None = None              # an .npz's (N, H, W, 3) uint8 images
    stats: dict[str, np.ndarray] | None = None   # precomputed Inception statistics (mu, sigma) of an .npz
    spatial_stats: dict[str, np.ndarray] | None = None  # precomputed sFID statistics (mu_s, sigma_s as mu, sigma)
    _hash: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.array)

    def describe(self) -> str:
        h, w = self.size
        return f"{self.what} {self.path} ({len(self)} images, {h}x{w}, {'/'.join(self.modes)})"

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The images in order, ``batch_size`` at a time, as uint8 ``(B, 3, H, W)``."""
        for start in range(0, len(self), batch_size):
            if self.files is not None:
                images = [np.asarray(Image.open(f).convert("RGB")) for f in self.files[start:start + batch_size]]
                batch = np.stack(images)
            else:
                batch = self.array[start:start + batch_size]
                if batch.shape[-1] == 1:
                    batch = np.repeat(batch, 3, axis=-1)
            yield torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)

    def content_hash(self) -> str:
        """SHA-256 of the images' bytes (a folder: its file names and contents in order; an .npz: the file)."""
        if self._hash is None:
            h = hashlib.sha256()
            paths = self.files if self.files is not None else [str(self.path)]
            for p in paths:
                if self.files is not None:
                    h.update(os.path.basename(p).encode() + b"\0")
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            self._hash = h.hexdigest()
        return self._hash


def find_images(folder: str | os.PathLike) -> list[str]:
    """Image files directly inside ``folder``, as torch-fidelity finds them (real paths, sorted)."""
    files = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        ext = os.path.splitext(name)[1].lower().lstrip(".")
        if ext in IMAGE_EXTENSIONS and os.path.isfile(path):
            files.append(os.path.realpath(path))
    return sorted(files)


def _summarize(counter: Counter, examples: dict, unit: str) -> str:
    return ", ".join(f"{n} {unit} {key} (e.g. {examples[key]})" for key, n in counter.most_common())


def open_image_set(path: str | os.PathLike, what: str = "--samples") -> ImageSet:
    """Check and open the image set at ``path``; FileNotFoundError / ValueError naming the problem."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {p}: not found (expected {EXPECTED})")
    if p.is_dir():
        return _open_folder(p, what)
    if p.suffix.lower() == ".npz":
        return _open_npz(p, what)
    raise ValueError(f"{what} {p}: not a folder or an .npz file (expected {EXPECTED})")


def _open_folder(p: Path, what: str) -> ImageSet:
    files = find_images(p)
    if not files:
        others = sorted(os.listdir(p))[:5]
        raise ValueError(f"{what} {p}: the folder holds no .png/.jpg/.jpeg image (subfolders are not searched)"
                         + (f"; it holds {others}" if others else "; it is empty"))
    sizes: Counter = Counter()
    modes: Counter = Counter()
    size_example: dict = {}
    mode_example: dict = {}
    for f in files:
        try:
            with Image.open(f) as im:  # reads the header only
                size, mode = (im.height, im.width), im.mode
        except OSError as err:
            raise ValueError(f"{what}: cannot read image {f}: {err}") from err
        sizes[size] += 1
        modes[mode] += 1
        size_example.setdefault(size, os.path.basename(f))
        mode_example.setdefault(mode, os.path.basename(f))
    if len(sizes) > 1:
        shown = {f"{h}x{w}": size_example[(h, w)] for h, w in sizes}
        raise ValueError(f"{what} {p}: images differ in size: "
                         + _summarize(Counter({f"{h}x{w}": n for (h, w), n in sizes.items()}), shown, "are")
                         + "; every image of a set must have one size")
    if len(modes) > 1:
        logger.warning("%s %s: images differ in mode (%s); all are converted to RGB", what, p,
                       _summarize(modes, mode_example, "are"))
    lossy = [f for f in files if os.path.splitext(f)[1].lower().lstrip(".") in LOSSY_EXTENSIONS]
    if lossy:
        logger.warning("%s %s: %d of %d images are JPEG; lossy compression changes the metrics",
                       what, p, len(lossy), len(files))
    (size,) = sizes
    return ImageSet(path=p, what=what, size=size, modes=dict(modes), files=files)


def _open_npz(p: Path, what: str) -> ImageSet:
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{what} {p}: cannot read the .npz: {err}") from err
    with data:
        if "arr_0" not in data.files:
            raise ValueError(f"{what} {p}: no arr_0 in the .npz (keys {data.files}); expected {EXPECTED}")
        array = data["arr_0"]
        stats = {k: data[k] for k in ("mu", "sigma") if k in data.files}
        spatial = {k[:-2]: data[k] for k in ("mu_s", "sigma_s") if k in data.files}
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or array.dtype != np.uint8:
        raise ValueError(f"{what} {p}: arr_0 is {array.dtype} of shape {array.shape}; expected (N, H, W, 3) uint8 "
                         f"as the sampling scripts and ADM's reference batches write")
    if len(array) == 0:
        raise ValueError(f"{what} {p}: arr_0 holds no image")
    if stats and set(stats) != {"mu", "sigma"}:
        raise ValueError(f"{what} {p}: holds {sorted(stats)} but not both mu and sigma")
    if spatial and set(spatial) != {"mu", "sigma"}:
        raise ValueError(f"{what} {p}: holds {sorted(k + '_s' for k in spatial)} but not both mu_s and sigma_s")
    mode = "RGB" if array.shape[-1] == 3 else "L"
    return ImageSet(path=p, what=what, size=(array.shape[1], array.shape[2]), modes={mode: len(array)}, array=array,
                    stats=stats or None, spatial_stats=spatial or None)


def check_pair(samples: ImageSet, reference: ImageSet, allow_size_mismatch: bool = False) -> None:
    """ValueError when the two sets differ in image size (unless allowed); a warning when in mode."""
    if samples.size != reference.size:
        msg = (f"{samples.describe()} and {reference.describe()} differ in image size; Inception resizes both to "
               f"299x299, so the metric would mostly measure the resolution")
        if not allow_size_mismatch:
            raise ValueError(msg + " (pass --allow_size_mismatch to compare them anyway)")
        logger.warning(msg)
    if set(samples.modes) != set(reference.modes):
        logger.warning("%s and %s differ in image mode; both are converted to RGB", samples.describe(),
                       reference.describe())
