"""Shared pieces of the data package (latent diffusion, Rombach et al., CVPR 2022).

- ``Txt2ImgIterableBaseDataset``: the original's abstract iterable dataset (``num_records``,
  ``valid_ids``, ``sample_ids``, ``size``), which the data module splits across loader workers.
- Image helpers: reading a file with an error that names it, square crops, resizing, and conversion
  to the batch format every model's ``get_input`` expects: ``(H, W, C)`` float32 in [-1, 1].
- ``LabelColumns``: per-example label columns as a dataset (no images).
- ``ImagePaths``: a list of image files as a dataset (rescale the smallest side, crop, label columns),
  as taming-transformers' ``ImagePaths`` which the original ImageNet and FFHQ datasets used.
- ``split_class``: builds the per-split classes configs name (``LSUNChurchesTrain``, ...) from a base
  dataset and the split's defaults; ``split_folder``: the ``<data_root>/<split>`` folder of a dataset.

Random choices (crops, flips) draw from torch's global generator, which the DataLoader seeds
differently in each worker process, so augmentations differ across workers without extra care.
"""
from __future__ import annotations

import inspect
import logging
import os
from abc import abstractmethod
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from ldm import pixels
from ldm.util import REPO_ROOT, resolve_path  # noqa: F401 (resolve_path is used by the dataset modules)

logger = logging.getLogger(__name__)

#: The repository checkout; relative data paths of the original configs (``data/lsun/...``) are
#: looked up in the working directory first, then here.

#: File endings read as images when a folder is scanned.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif")

#: Resampling filters by the names configs use. "area" is PIL's box filter, the closest match of
#: OpenCV's INTER_AREA; "linear" is the original LSUN dataset's alias of bilinear.
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "linear": Image.Resampling.BILINEAR,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "area": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class ImageReadError(OSError):
    """An image file that exists but cannot be decoded; the message names the file."""


def resampling(name: str) -> Image.Resampling:
    """The PIL filter called ``name``; raises naming the allowed names."""
    if name not in RESAMPLING:
        raise ValueError(f"interpolation must be one of {', '.join(RESAMPLING)}; got {name!r}")
    return RESAMPLING[name]


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The non-empty lines of the text file ``path``; a missing file raises ``FileNotFoundError`` that
    names it and says, through ``what``, what the file should contain."""
    resolved = resolve_path(path)
    if not os.path.isfile(resolved):
        raise FileNotFoundError(f"file list {os.fspath(path)!r} not found (looked in {os.getcwd()!r} and "
                                f"{str(REPO_ROOT)!r}); it should contain {what}")
    with open(resolved, "r", encoding="utf-8") as f:
        return [line.strip() for line in f.read().splitlines() if line.strip()]


#: PIL modes whose pixels are 16- or 32-bit integers or 32-bit floats: converted by `pixels_to_uint8`,
#: not by ``Image.convert`` (which clips 16-bit values to 255, so that most pixels turn white).
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def pixels_to_uint8(arr: np.ndarray, path: str) -> np.ndarray:
    """Pixel values of any integer or float type as uint8, or `ImageReadError` naming the file and range.

    uint8 is taken as is, bool as {0, 255}, uint16 (and 16-bit PNG/TIFF modes) as 0..65535, other integer
    types must hold values in 0..255; floats in [0, 1] are scaled by 255, floats in [-1, 1] (with negative
    values) map to [0, 255], floats in [0, 255] are rounded. Anything else is refused rather than guessed.
    """
    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        return arr
    if kind == "b":
        return arr.astype(np.uint8) * 255
    if kind in "iu":
        if arr.size == 0:
            return arr.astype(np.uint8)
        lo, hi = int(arr.min()), int(arr.max())
        if arr.dtype == np.uint16:
            return np.rint(arr.astype(np.float64) / 257.0).astype(np.uint8)  # 65535 -> 255
        if lo >= 0 and hi <= 255:
            return arr.astype(np.uint8)
        raise ImageReadError(f"cannot read image {path!r}: {arr.dtype} values in [{lo}, {hi}] fit neither 0..255 "
                             f"nor (as uint16) 0..65535; rescale it to uint8 or uint16")
    if kind == "f":
        if arr.size == 0:
            return arr.astype(np.uint8)
        if not np.isfinite(arr).all():
            raise ImageReadError(f"cannot read image {path!r}: it holds NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            scaled = arr.astype(np.float64) * 255.0
        elif lo >= -1.0 and hi <= 1.0:
            scaled = (arr.astype(np.float64) + 1.0) * 127.5
        elif lo >= 0.0 and hi <= 255.0:
            scaled = arr.astype(np.float64)
        else:
            raise ImageReadError(f"cannot read image {path!r}: {arr.dtype} values in [{lo:g}, {hi:g}] are in none "
                                 f"of the ranges [0, 1], [-1, 1] or [0, 255]")
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    raise ImageReadError(f"cannot read image {path!r}: pixels of type {arr.dtype} are not numbers; expected "
                         f"an integer or float array")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read ``path`` as an RGB PIL image, decoding it fully so that a truncated file fails here.

    Every PIL mode is converted to 8-bit RGB: 16-bit and 32-bit integer and float modes through
    `pixels_to_uint8` (a 16-bit PNG keeps its full range), alpha is dropped, palettes are expanded;
    modes PIL cannot convert to RGB (LAB, HSV, ...) are refused with their name.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path!r} not found")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "RGB":
                return img.copy()
            if img.mode in _WIDE_MODES:
                arr = np.asarray(img)
                if arr.dtype.kind == "i" and arr.size and arr.min() >= 0 and 255 < arr.max() <= 65535:
                    arr = arr.astype(np.uint16)  # 16-bit samples that PIL holds in 32-bit "I" mode
                gray = pixels_to_uint8(arr, path)
                return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1), mode="RGB")
            try:
                return img.convert("RGB")
            except ValueError as err:
                raise ImageReadError(f"cannot read image {path!r}: PIL mode {img.mode!r} cannot be converted to "
                                     f"RGB ({err}); save it as RGB, grayscale or palette") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageReadError(f"cannot read image {path!r}: {err}") from err


def load_image_array(path: str | os.PathLike) -> np.ndarray:
    """Read ``path`` as a ``(H, W, 3)`` uint8 array. ``.npy`` files hold one image as ``(1, 3, H, W)``
    or ``(3, H, W)`` (the CelebA-HQ layout of taming-transformers), ``(H, W, 3)`` or ``(H, W)``
    (grayscale), of any integer or float type that `pixels_to_uint8` accepts."""
    path = os.fspath(path)
    if not path.lower().endswith(".npy"):
        return np.asarray(load_image(path), dtype=np.uint8)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path!r} not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ImageReadError(f"cannot read image {path!r}: {err}") from err
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ImageReadError(f"cannot read image {path!r}: expected an array of shape (1, 3, H, W), (3, H, W), "
                             f"(H, W, 3) or (H, W); got {arr.shape}")
    return np.ascontiguousarray(pixels_to_uint8(arr, path))


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 values in [0, 255] -> float32 in [-1, 1] (the original's ``image / 127.5 - 1``)."""
    return (image / 127.5 - 1.0).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Inverse of ``to_float``: float in [-1, 1] -> uint8, clipped and rounded (`ldm.pixels.to_uint8`)."""
    return pixels.to_uint8(np.asarray(image), nearest=True)


def random_float(low: float, high: float) -> float:
    """A uniform number in [low, high) from torch's global generator."""
    return low + (high - low) * float(torch.rand(()))


def random_int(high: int) -> int:
    """A uniform integer in [0, high) from torch's global generator (0 when ``high`` <= 1)."""
    return int(torch.randint(high, ())) if high > 1 else 0


def center_crop_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an ``(H, W, ...)`` array, cut as the original LSUN dataset did."""
    h, w = image.shape[:2]
    side = min(h, w)
    return image[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]


def crop(image: np.ndarray, height: int, width: int, random_crop: bool = False) -> np.ndarray:
    """A ``height x width`` window of ``image``: centred, or at a random offset when ``random_crop``."""
    h, w = image.shape[:2]
    if height > h or width > w:
        raise ValueError(f"crop of {height}x{width} does not fit into an image of {h}x{w}")
    if random_crop:
        top, left = random_int(h - height + 1), random_int(w - width + 1)
    else:
        top, left = (h - height) // 2, (w - width) // 2
    return image[top:top + height, left:left + width]


def resize(image: np.ndarray, height: int, width: int, interpolation: str = "bicubic") -> np.ndarray:
    """Resize a uint8 ``(H, W, C)`` array with the named PIL filter."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), resample=resampling(interpolation)))


def resize_smallest_side(image: np.ndarray, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Scale a uint8 ``(H, W, C)`` array so that its smaller side is ``size`` (keeps the aspect ratio)."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    new_h, new_w = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    return resize(image, new_h, new_w, interpolation)


def maybe_flip(image: np.ndarray, flip_p: float) -> np.ndarray:
    """Mirror left-right with probability ``flip_p``."""
    if flip_p > 0 and float(torch.rand(())) < flip_p:
        return np.ascontiguousarray(image[:, ::-1])
    return image


def list_images(root: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Sorted paths of the image files under ``root`` (relative to ``root``)."""
    root = os.fspath(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
        if not recursive:
            break
    return found


def check_size(size: int | None, name: str = "size") -> None:
    """Raise unless ``size`` is None or a positive integer."""
    if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size <= 0):
        raise ValueError(f"{name} must be a positive integer or None; got {size!r}")


def split_folder(data_root: str, split: str, splits: Sequence[str], dataset: str, contents: str) -> str:
    """``<data_root>/<split>`` (``data_root`` resolved as `resolve_path` does). Raises naming the split and the
    allowed ``splits``, or, when the folder is missing, naming it, the ``dataset`` and the ``contents`` it
    should hold."""
    if split not in splits:
        raise ValueError(f"split must be one of {', '.join(splits)}; got {split!r}")
    folder = os.path.join(resolve_path(data_root), split)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{dataset} folder {folder!r} not found; it should hold {contents}")
    return folder


def split_class(
    base: type,                                      # the dataset class the split specializes
    name: str,                                       # the class name configs use (``target: <module>.<name>``)
    doc: str,                                        # the class docstring
    module: str,                                     # the module that binds the class to ``name``
    defaults: Mapping[str, Any] | None = None,       # constructor defaults of the split (still overridable)
    fixed: Mapping[str, Any] | None = None,          # keywords the split sets for good (no longer accepted)
    params: Sequence[str] | None = None,             # the parameters it accepts, in order (None: base's, less fixed)
) -> type:
    """A subclass ``name`` of ``base`` for one split of a dataset, as if written out in ``module``.

    Its constructor takes ``params`` (positionally or by keyword, with ``defaults`` replacing base's
    defaults; ``inspect.signature`` shows them) and calls ``base.__init__`` with them and ``fixed``.
    ``__module__`` and ``__qualname__`` are those of ``module.name``, so that configs, pickle and
    tracebacks find the class once ``module`` binds it to ``name``.
    """
    defaults, fixed = dict(defaults or {}), dict(fixed or {})
    self_param, *base_params = inspect.signature(base.__init__).parameters.values()
    by_name = {p.name: p for p in base_params}
    names = list(params) if params is not None else [n for n in by_name if n not in fixed]
    unknown = sorted((set(names) | set(defaults) | set(fixed)) - set(by_name))
    if unknown:
        raise TypeError(f"{base.__name__} has no parameters {unknown}; it takes {', '.join(by_name)}")
    omitted = [n for n, p in by_name.items() if n not in names and n not in fixed and p.default is p.empty]
    if omitted:
        raise TypeError(f"split {name!r} must accept or fix the required parameters {omitted} of {base.__name__}")
    signature = inspect.Signature([self_param] + [by_name[n].replace(default=defaults.get(n, by_name[n].default))
                                                  for n in names])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{name}: {err}; it takes {', '.join(names)}") from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments[self_param.name]
        base.__init__(self, **arguments, **fixed)

    __init__.__signature__ = signature
    __init__.__qualname__ = f"{name}.__init__"
    __init__.__module__ = module
    return type(name, (base,), {"__doc__": doc, "__module__": module, "__qualname__": name, "__init__": __init__})


class LabelColumns(Dataset):
    """Per-example columns without images: item i is a dict with the i-th entry of each column."""

    def __init__(self, labels: Mapping[str, Sequence[Any]]):  # column name -> values, all of one length
        self.labels = {k: list(v) for k, v in labels.items()}
        lengths = {len(v) for v in self.labels.values()}
        if len(lengths) != 1:
            raise ValueError(f"label columns must be non-empty and of one length; got lengths "
                             f"{ {k: len(v) for k, v in self.labels.items()} }")
        self._length = lengths.pop()

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: column[i] for k, column in self.labels.items()}


class ImagePaths(Dataset):
    """Images from a list of files: rescale the smaller side to ``size``, crop a ``size`` square, and
    return ``image`` in [-1, 1] together with the i-th entry of every label column."""

    def __init__(
        self,
        paths: Sequence[str],                        # image files (.npy files hold one uint8 image each)
        size: int | None = None,                     # output side length; None keeps the file's size
        random_crop: bool = False,                   # random instead of centred square crop
        labels: Mapping[str, Sequence[Any]] | None = None,  # extra per-example columns, same length as paths
        interpolation: str = "bilinear",             # filter used to rescale the smaller side
    ):
        check_size(size)
        resampling(interpolation)
        self.size = size
        self.random_crop = random_crop
        self.interpolation = interpolation
        self.labels = {k: list(v) for k, v in (labels or {}).items()}
        self.labels["file_path_"] = list(paths)
        for key, column in self.labels.items():
            if len(column) != len(paths):
                raise ValueError(f"label column {key!r} has {len(column)} entries but there are {len(paths)} paths")
        self._length = len(paths)

    def __len__(self) -> int:
        return self._length

    def preprocess_image(self, image_path: str) -> np.ndarray:
        image = load_image_array(image_path)
        if self.size is not None:
            image = resize_smallest_side(image, self.size, self.interpolation)
            image = crop(image, self.size, self.size, self.random_crop)
        return to_float(image)

    def __getitem__(self, i: int) -> dict[str, Any]:
        example = {k: column[i] for k, column in self.labels.items()}
        example["image"] = self.preprocess_image(example["file_path_"])
        return example


class Txt2ImgIterableBaseDataset(IterableDataset):
    """Interface of the original's chainable iterable text-to-image datasets. ``DataModuleFromConfig``'s
    worker init function gives each loader worker its own slice of ``valid_ids`` as ``sample_ids``."""

    def __init__(
        self,
        num_records: int = 0,                        # number of examples in the dataset
        valid_ids: Sequence[int] | None = None,      # ids of the usable records
        size: int = 256,                             # image side length
    ):
        super().__init__()
        self.num_records = num_records
        self.valid_ids = valid_ids
        self.sample_ids = valid_ids
        self.size = size
        logger.info("%s dataset contains %d examples.", self.__class__.__name__, len(self))

    def __len__(self) -> int:
        return self.num_records

    @abstractmethod
    def __iter__(self):
        """Yield example dicts, drawing from ``self.sample_ids``."""
