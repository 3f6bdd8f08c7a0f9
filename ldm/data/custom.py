"""Datasets for users' own images, in the batch format of latent diffusion (Rombach et al., CVPR 2022).

- ``ImageFolderDataset``: a folder of images (class subfolders give ``class_label``), a text file
  listing image paths, or a list of paths.
- ``ImageCaptionDataset``: a JSONL/JSON/CSV/TSV table of image files and captions (text-to-image).
- ``InpaintingDataset``: images with random masks (rectangles and brush strokes, in the spirit of
  LaMa, Suvorov et al. 2022) and the keys the inpainting LDM reads: ``image``, ``mask`` (1 = to be
  filled) and ``masked_image`` = ``image * (1 - mask)``.
- ``SuperResolutionDataset``: ``image`` and its degraded ``LR_image`` (see ``ldm.data.superres``).

Images come out as ``(H, W, C)`` float32 in [-1, 1]; masks as ``(H, W, 1)`` float32 in {0, 1}.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ldm.data.base import (IMAGE_EXTENSIONS, LabelColumns, check_size, crop, list_images, load_image_array, maybe_flip,
                           read_lines, resampling, resize_smallest_side, resolve_path, to_float, to_uint8)
from ldm.data.superres import SuperResolutionPipeline

#: Column names accepted for the image path and the caption of ``ImageCaptionDataset`` (first match wins).
IMAGE_COLUMNS = ("file_name", "image", "file", "filename", "path", "image_path")
CAPTION_COLUMNS = ("caption", "text")
LABEL_COLUMNS = ("class_label", "label")

#: Kinds of random inpainting masks.
MASK_MODES = ("mixed", "rectangles", "strokes")


def square_image(image: np.ndarray, size: int | None, random_crop: bool, interpolation: str) -> np.ndarray:
    """Rescale the smaller side of a uint8 image to ``size`` and crop a ``size`` square (None: unchanged)."""
    if size is None:
        return image
    image = resize_smallest_side(image, size, interpolation)
    return crop(image, size, size, random_crop)


def _gather_paths(root: str | os.PathLike | Sequence[str]) -> tuple[list[str], list[str], str]:
    """(absolute paths, display paths, description) of the images named by ``root``: a folder, a text
    file with one path per line (relative to the file's folder), or a list of paths. Raises when there
    are no images or a listed file does not exist."""
    if isinstance(root, (str, os.PathLike)):
        resolved = resolve_path(root)
        if os.path.isdir(resolved):
            rel = list_images(resolved)
            what = f"folder {os.fspath(root)!r}"
            if not rel:
                raise FileNotFoundError(f"no images found in {what} (looked for {', '.join(IMAGE_EXTENSIONS)})")
            return [os.path.join(resolved, p) for p in rel], rel, what
        if os.path.isfile(resolved):
            rel = read_lines(resolved, "one image path per line")
            base = os.path.dirname(os.path.abspath(resolved))
            paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in rel]
            what = f"file list {os.fspath(root)!r}"
            _check_files(paths, what)
            return paths, rel, what
        raise FileNotFoundError(f"image root {os.fspath(root)!r} not found: expected a folder of images (optionally "
                                f"one subfolder per class) or a text file listing image paths")
    paths = [os.fspath(p) for p in root]
    _check_files(paths, "the given list of paths")
    return paths, paths, "the given list of paths"


def _check_files(paths: Sequence[str], what: str) -> None:
    """Raise unless ``paths`` is non-empty and every file exists."""
    if not paths:
        raise FileNotFoundError(f"no images found in {what}")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image file(s) of {what} do not exist, e.g. {missing[0]!r}")


class ImageFolderDataset(Dataset):
    """Images from a folder, a file list or a list of paths. When every image of a folder sits in a
    subfolder, the sorted subfolder names are the classes (``class_label``, ``human_label``)."""

    def __init__(
        self,
        root: str | Sequence[str],                   # folder, text file of paths, or a list of paths
        size: int | None = None,                     # output side: smaller side rescaled, square crop; None keeps
        random_crop: bool = False,                   # random instead of centred square crop
        flip_p: float = 0.0,                         # probability of a left-right flip
        interpolation: str = "bicubic",              # filter used to rescale
        class_subfolders: bool | None = None,        # classes from subfolders: None decides by the folder layout
    ):
        check_size(size)
        resampling(interpolation)
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1]; got {flip_p!r}")
        paths, rel, what = _gather_paths(root)
        self.size = size
        self.random_crop = random_crop
        self.flip_p = flip_p
        self.interpolation = interpolation
        self.labels: dict[str, list[Any]] = {"file_path_": paths, "relative_file_path_": rel}

        is_folder = isinstance(root, (str, os.PathLike)) and os.path.isdir(resolve_path(root))
        nested = all(os.sep in p or "/" in p for p in rel)
        if class_subfolders is None:
            class_subfolders = is_folder and nested
        if class_subfolders:
            if not (is_folder and nested):
                raise ValueError(f"class_subfolders=True needs a folder whose images all sit in class subfolders; "
                                 f"{what} has images outside subfolders or is not a folder")
            names = [p.replace(os.sep, "/").split("/", 1)[0] for p in rel]
            self.classes = sorted(set(names))
            index = {name: i for i, name in enumerate(self.classes)}
            self.labels["class_label"] = [index[n] for n in names]
            self.labels["human_label"] = names
        else:
            self.classes = []

    def __len__(self) -> int:
        return len(self.labels["file_path_"])

    def load(self, i: int) -> np.ndarray:
        """The i-th image as a uint8 ``(size, size, 3)`` array, cropped and maybe flipped."""
        image = load_image_array(self.labels["file_path_"][i])
        image = square_image(image, self.size, self.random_crop, self.interpolation)
        return maybe_flip(image, self.flip_p)

    def __getitem__(self, i: int) -> dict[str, Any]:
        example = {k: column[i] for k, column in self.labels.items()}
        example["image"] = to_float(self.load(i))
        return example


def _read_table(path: str) -> list[dict[str, Any]]:
    """Rows of a .jsonl, .json (a list of objects), .csv or .tsv file."""
    ext = os.path.splitext(path)[1].lower()
    with open(path, "r", encoding="utf-8", newline="") as f:
        if ext == ".jsonl":
            rows = []
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path!r} line {n} is not valid JSON: {err}") from err
            return rows
        if ext == ".json":
            rows = json.load(f)
            if not isinstance(rows, list):
                raise ValueError(f"{path!r} must hold a JSON list of objects; got {type(rows).__name__}")
            return rows
        if ext in (".csv", ".tsv"):
            return list(csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ","))
    raise ValueError(f"caption file must end in .jsonl, .json, .csv or .tsv; got {path!r}")


def _pick(row: Mapping[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        if name in row and row[name] not in (None, ""):
            return row[name]
    return None


class ImageCaptionDataset(Dataset):
    """Image/caption pairs listed in a table file: keys ``image``, ``caption`` (and ``class_label`` when
    the table has a ``class_label`` or ``label`` column). Image paths are relative to the table's folder
    unless ``image_root`` is given."""

    def __init__(
        self,
        file: str,                                   # .jsonl, .json, .csv or .tsv with image and caption columns
        size: int | None = None,                     # output side: smaller side rescaled, square crop; None keeps
        random_crop: bool = False,                   # random instead of centred square crop
        flip_p: float = 0.0,                         # probability of a left-right flip (captions naming
                                                     # left/right then lie; keep 0 for such data)
        interpolation: str = "bicubic",              # filter used to rescale
        image_root: str | None = None,               # folder the image paths are relative to
    ):
        check_size(size)
        resampling(interpolation)
        resolved = resolve_path(file)
        if not os.path.isfile(resolved):
            raise FileNotFoundError(f"caption file {file!r} not found; it should be a .jsonl/.json/.csv/.tsv table "
                                    f"with an image column ({', '.join(IMAGE_COLUMNS)}) and a caption column "
                                    f"({', '.join(CAPTION_COLUMNS)})")
        rows = _read_table(resolved)
        if not rows:
            raise ValueError(f"caption file {file!r} has no rows")
        base = resolve_path(image_root) if image_root is not None else os.path.dirname(os.path.abspath(resolved))
        paths, captions, labels = [], [], []
        for n, row in enumerate(rows):
            image, caption = _pick(row, IMAGE_COLUMNS), _pick(row, CAPTION_COLUMNS)
            if image is None or caption is None:
                raise ValueError(f"caption file {file!r} row {n}: needs an image column ({', '.join(IMAGE_COLUMNS)}) "
                                 f"and a caption column ({', '.join(CAPTION_COLUMNS)}); got columns {sorted(row)}")
            paths.append(image if os.path.isabs(image) else os.path.join(base, image))
            captions.append(str(caption))
            labels.append(_pick(row, LABEL_COLUMNS))
        _check_files(paths, f"caption file {file!r}")
        self.size = size
        self.random_crop = random_crop
        self.flip_p = flip_p
        self.interpolation = interpolation
        self.labels: dict[str, list[Any]] = {"file_path_": paths, "caption": captions}
        if all(label is not None for label in labels):
            try:
                self.labels["class_label"] = [int(label) for label in labels]
            except (TypeError, ValueError) as err:
                raise ValueError(f"caption file {file!r}: class labels must be integers ({err})") from err

    def __len__(self) -> int:
        return len(self.labels["file_path_"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        example = {k: column[i] for k, column in self.labels.items()}
        image = load_image_array(example["file_path_"])
        image = square_image(image, self.size, self.random_crop, self.interpolation)
        example["image"] = to_float(maybe_flip(image, self.flip_p))
        return example


def random_inpainting_mask(
    height: int,
    width: int,
    rng: np.random.Generator,
    mode: str = "mixed",
    max_rectangles: int = 3,
    max_strokes: int = 4,
    max_coverage: float = 0.7,
) -> np.ndarray:
    """A ``(height, width, 1)`` float32 mask in {0, 1} (1 = to be filled) of random axis-aligned
    rectangles and/or thick polyline brush strokes; redrawn (up to 10 times) while it covers more than
    ``max_coverage`` of the image."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {', '.join(MASK_MODES)}; got {mode!r}")
    side = min(height, width)
    for _ in range(10):
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        n_rect = int(rng.integers(0, max_rectangles + 1)) if mode != "strokes" else 0
        n_strokes = int(rng.integers(0, max_strokes + 1)) if mode != "rectangles" else 0
        if n_rect + n_strokes == 0:
            n_rect, n_strokes = (1, 0) if mode == "rectangles" or (mode == "mixed" and rng.random() < 0.5) else (0, 1)
        for _ in range(n_rect):
            w, h = rng.uniform(0.1, 0.5) * width, rng.uniform(0.1, 0.5) * height
            x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=1)
        for _ in range(n_strokes):
            thickness = max(1, int(rng.uniform(0.04, 0.12) * side))
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            angle = rng.uniform(0, 2 * math.pi)
            points = [(x, y)]
            for _ in range(int(rng.integers(2, 7))):
                angle += rng.uniform(-math.pi / 2, math.pi / 2)
                length = rng.uniform(0.1, 0.3) * side
                x = float(np.clip(x + length * math.cos(angle), 0, width - 1))
                y = float(np.clip(y + length * math.sin(angle), 0, height - 1))
                points.append((x, y))
            draw.line(points, fill=1, width=thickness, joint="curve")
            for px, py in (points[0], points[-1]):
                r = thickness / 2
                draw.ellipse([px - r, py - r, px + r, py + r], fill=1)
        mask = np.asarray(canvas, dtype=np.float32)[..., None]
        if 0 < mask.mean() <= max_coverage:
            break
    return mask


def _as_dataset(dataset: Mapping[str, Any] | Dataset, where: str) -> Dataset:
    """``dataset`` itself, or the dataset its ``{target, params}`` config builds."""
    if isinstance(dataset, Mapping) or hasattr(dataset, "keys"):
        from ldm.util import instantiate_from_config

        return instantiate_from_config(dataset, where=where)
    return dataset


class InpaintingDataset(Dataset):
    """Images with random masks: ``image``, ``mask`` (``(H, W, 1)``, 1 = to be filled) and
    ``masked_image`` = ``image * (1 - mask)`` (masked pixels become 0, mid-grey in [-1, 1]), as the
    original inpainting LDM (``cond_stage_key: masked_image``, concat conditioning) expects. Other
    keys of the wrapped dataset (``class_label``, ``caption``, ...) pass through."""

    def __init__(
        self,
        root: str | Sequence[str] | None = None,     # images as for ImageFolderDataset ...
        size: int | None = 256,                      # ... cropped to this side (ignored with ``dataset``)
        dataset: Mapping[str, Any] | Dataset | None = None,  # ... or a dataset (or its config) yielding ``image``
        random_crop: bool = False,                   # random instead of centred crop (with ``root``)
        flip_p: float = 0.0,                         # probability of a left-right flip (with ``root``)
        mask_mode: str = "mixed",                    # "mixed", "rectangles" or "strokes"
        max_rectangles: int = 3,                     # most rectangles in one mask
        max_strokes: int = 4,                        # most brush strokes in one mask
        max_coverage: float = 0.7,                   # largest masked fraction of the image
        deterministic_masks: bool = False,           # mask i always the same (for validation)
        seed: int = 0,                               # seed of the deterministic masks
    ):
        if (root is None) == (dataset is None):
            raise ValueError("InpaintingDataset needs exactly one of root (image folder or list) and dataset "
                             f"(a dataset or its config); got root={root!r}, dataset={dataset!r}")
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {', '.join(MASK_MODES)}; got {mask_mode!r}")
        if not 0.0 < max_coverage <= 1.0:
            raise ValueError(f"max_coverage must be in (0, 1]; got {max_coverage!r}")
        if root is not None:
            self.base = ImageFolderDataset(root, size=size, random_crop=random_crop, flip_p=flip_p)
        else:
            self.base = _as_dataset(dataset, "InpaintingDataset.dataset")
        self.mask_mode = mask_mode
        self.max_rectangles = max_rectangles
        self.max_strokes = max_strokes
        self.max_coverage = max_coverage
        self.deterministic_masks = deterministic_masks
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)

    def _rng(self, i: int) -> np.random.Generator:
        if self.deterministic_masks:
            return np.random.default_rng([self.seed, i])
        return np.random.default_rng(int(torch.randint(2**62, ())))

    def __getitem__(self, i: int) -> dict[str, Any]:
        example = dict(self.base[i])
        image = example["image"]
        mask = random_inpainting_mask(image.shape[0], image.shape[1], self._rng(i), mode=self.mask_mode,
                                      max_rectangles=self.max_rectangles, max_strokes=self.max_strokes,
                                      max_coverage=self.max_coverage)
        example["mask"] = mask
        example["masked_image"] = (image * (1.0 - mask)).astype(np.float32)
        return example


class SuperResolutionDataset(Dataset):
    """High-resolution ``image`` and degraded ``LR_image`` (side ``size // downscale_f``), made as the
    original ``ImageNetSR`` made them, from a folder of images, a file list, a list of paths, or the
    ``image`` of another dataset (e.g. the embedded shapes, whose other keys pass through)."""

    def __init__(
        self,
        root: str | Sequence[str] | None = None,     # folder, text file of paths, or a list of paths ...
        size: int = 256,                             # side of the high-resolution image
        downscale_f: int = 4,                        # size / downscale_f is the side of LR_image
        degradation: str = "pil_bicubic",            # one of ldm.data.superres.DEGRADATIONS
        min_crop_f: float = 1.0,                     # smallest crop, as a fraction of the smaller image side
        max_crop_f: float = 1.0,                     # largest crop fraction
        random_crop: bool = True,                    # random crop position instead of the centre
        dataset: Mapping[str, Any] | Dataset | None = None,  # ... or a dataset (or its config) yielding ``image``
    ):
        if (root is None) == (dataset is None):
            raise ValueError("SuperResolutionDataset needs exactly one of root (image folder or list) and dataset "
                             f"(a dataset or its config); got root={root!r}, dataset={dataset!r}")
        self.pipeline = SuperResolutionPipeline(size, degradation, downscale_f, min_crop_f, max_crop_f, random_crop)
        if root is not None:
            paths, rel, _ = _gather_paths(root)
            self.base = LabelColumns({"file_path_": paths, "relative_file_path_": rel})
        else:
            self.base = _as_dataset(dataset, "SuperResolutionDataset.dataset")

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        example = dict(self.base[i])
        if "image" in example:
            image = to_uint8(example["image"])
        else:
            image = load_image_array(example["file_path_"])
        example["image"], example["LR_image"] = self.pipeline(image)
        return example
