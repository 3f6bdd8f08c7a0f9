"""LSUN churches, bedrooms and cats (Yu et al. 2015) from local files, as the latent diffusion configs
(Rombach et al., CVPR 2022) name them: ``ldm.data.lsun.LSUNChurchesTrain`` and friends.

Each split reads a text file listing image paths relative to a data folder, with the original's
default locations (``data/lsun/church_outdoor_train.txt`` and ``data/lsun/churches/``, ...). An image
is centre-cropped to a square (the score-SDE preprocessing), resized to ``size`` and flipped with
probability ``flip_p``; examples hold ``image``, ``relative_file_path_`` and ``file_path_``.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ldm.data.base import (center_crop_square, check_size, load_image_array, maybe_flip, read_lines, resampling,
                           resolve_path, split_class, to_float)

#: Interpolation names the original accepted.
INTERPOLATIONS = ("linear", "bilinear", "bicubic", "lanczos")


class LSUNBase(Dataset):
    """Images listed in ``txt_file`` (paths relative to ``data_root``). The split classes below default
    ``txt_file`` and ``data_root`` to the original's locations (and ``flip_p`` to 0 for validation)."""

    def __init__(
        self,
        txt_file: str | None = None,                 # text file: one image path per line, relative to data_root
        data_root: str | None = None,                # folder holding the images
        size: int | None = None,                     # output side length; None keeps the centre crop's size
        interpolation: str = "bicubic",              # one of INTERPOLATIONS
        flip_p: float = 0.5,                         # probability of a left-right flip
    ):
        if txt_file is None or data_root is None:
            raise ValueError(f"{type(self).__name__} needs txt_file and data_root; got txt_file={txt_file!r}, "
                             f"data_root={data_root!r}")
        check_size(size)
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}; got {interpolation!r}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1]; got {flip_p!r}")
        self.data_paths = txt_file
        self.image_paths = read_lines(txt_file, f"one image path per line, relative to the image folder "
                                                f"{data_root!r} (for example the output of "
                                                f"`find . -name '*.webp'` run inside it)")
        self.data_root = resolve_path(data_root)
        if not os.path.isdir(self.data_root):
            raise FileNotFoundError(f"LSUN image folder {data_root!r} not found; it should hold the images listed "
                                    f"in {txt_file!r}")
        first = os.path.join(self.data_root, self.image_paths[0]) if self.image_paths else None
        if first is None or not os.path.isfile(first):
            raise FileNotFoundError(f"{txt_file!r} lists no images or its first entry {first!r} does not exist; "
                                    f"its paths must be relative to {data_root!r}")
        self._length = len(self.image_paths)
        self.labels = {
            "relative_file_path_": list(self.image_paths),
            "file_path_": [os.path.join(self.data_root, p) for p in self.image_paths],
        }
        self.size = size
        self.interpolation = interpolation
        self.flip_p = flip_p

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> dict[str, Any]:
        example = {k: column[i] for k, column in self.labels.items()}
        image = center_crop_square(load_image_array(example["file_path_"]))
        if self.size is not None:
            image = np.asarray(Image.fromarray(image).resize((self.size, self.size),
                                                             resample=resampling(self.interpolation)))
        example["image"] = to_float(maybe_flip(image, self.flip_p))
        return example


def _lsun_splits(category: str, title: str, listing: str) -> tuple[type, type]:
    """The training and validation split classes of one category: ``LSUN<category>Train`` lists its images
    in ``data/lsun/<listing>_train.txt``, the validation split in ``<listing>_val.txt`` and is not flipped;
    both read ``data/lsun/<category in lower case>``."""
    data_root = f"data/lsun/{category.lower()}"
    train = split_class(LSUNBase, f"LSUN{category}Train", f"The training split of {title}.", __name__,
                        defaults={"txt_file": f"data/lsun/{listing}_train.txt", "data_root": data_root})
    validation = split_class(LSUNBase, f"LSUN{category}Validation", f"The validation split of {title}, not flipped.",
                             __name__, defaults={"txt_file": f"data/lsun/{listing}_val.txt", "data_root": data_root,
                                                 "flip_p": 0.0})
    return train, validation


LSUNChurchesTrain, LSUNChurchesValidation = _lsun_splits("Churches", "LSUN churches (outdoor)", "church_outdoor")
LSUNBedroomsTrain, LSUNBedroomsValidation = _lsun_splits("Bedrooms", "LSUN bedrooms", "bedrooms")
LSUNCatsTrain, LSUNCatsValidation = _lsun_splits("Cats", "LSUN cats", "cat")
