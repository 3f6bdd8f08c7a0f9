"""Landscape photos with semantic label maps for semantic image synthesis (Rombach et al., CVPR 2022).

The original's RFW landscapes set was never released; ``RFWTrain`` / ``RFWValidation`` read a local
folder with the same example format as taming-transformers' S-FLCKR data:

    data/rfw/train/images/<name>.jpg          photos
    data/rfw/train/segmentations/<name>.png   uint8 label maps (COCO-Stuff class per pixel)
    data/rfw/validation/...                   the same for validation

Examples hold ``image`` (``(crop_size, crop_size, 3)`` in [-1, 1]) and ``segmentation``, the one-hot
label map ``(crop_size, crop_size, n_labels)`` that ``SpatialRescaler(in_channels=182)`` reads.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ldm.data.base import (check_size, list_images, load_image_array, random_int, resize_smallest_side, split_folder,
                           to_float)

DATA_ROOT = "data/rfw"
SPLITS = ("train", "validation")


class RFWBase(Dataset):
    """Photos and label maps of one split; both rescaled to ``size`` (smaller side) and cropped together."""

    def __init__(
        self,
        split: str,                                  # "train" or "validation"
        size: int | None = None,                     # smaller side after rescaling (None: keep)
        crop_size: int | None = None,                # side of the square crop (None: ``size``)
        segmentation_to_float32: bool = False,       # one-hot map as float32 (else float64, as np.eye gives)
        random_crop: bool | None = None,             # random crop (None: for training only)
        n_labels: int = 182,                         # classes of the label maps (COCO-Stuff: 182)
        shift_segmentation: bool = False,            # add 1 to every label (maps that use 255 for "unlabelled")
        data_root: str = DATA_ROOT,                  # folder holding train/ and validation/
    ):
        check_size(size)
        check_size(crop_size, "crop_size")
        folder = split_folder(data_root, split, SPLITS, "landscape", "images/ with photos and segmentations/ with "
                              "a uint8 label map <name>.png per photo")
        image_dir, seg_dir = os.path.join(folder, "images"), os.path.join(folder, "segmentations")
        for path in (image_dir, seg_dir):
            if not os.path.isdir(path):
                raise FileNotFoundError(f"landscape folder {path!r} not found; expected {image_dir!r} with photos and "
                                        f"{seg_dir!r} with a uint8 label map <name>.png per photo")
        relpaths = list_images(image_dir)
        if not relpaths:
            raise FileNotFoundError(f"landscape folder {image_dir!r} holds no images")
        self.image_paths = [os.path.join(image_dir, p) for p in relpaths]
        self.segmentation_paths = [os.path.join(seg_dir, os.path.splitext(p)[0] + ".png") for p in relpaths]
        missing = [p for p in self.segmentation_paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} label map(s) missing, e.g. {missing[0]!r}")
        self.size = size
        self.crop_size = crop_size if crop_size is not None else size
        self.segmentation_to_float32 = segmentation_to_float32
        self.random_crop = split == "train" if random_crop is None else random_crop
        self.n_labels = n_labels
        self.shift_segmentation = shift_segmentation

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = load_image_array(self.image_paths[i])
        with Image.open(self.segmentation_paths[i]) as seg:
            segmentation = np.asarray(seg.convert("L") if seg.mode not in ("L", "P") else seg, dtype=np.uint8)
        if self.shift_segmentation:
            segmentation = segmentation + 1
        if segmentation.shape != image.shape[:2]:
            raise ValueError(f"label map {self.segmentation_paths[i]!r} is {segmentation.shape} but its photo is "
                             f"{image.shape[:2]}")
        if self.size is not None:
            image = resize_smallest_side(image, self.size, "area")
            segmentation = resize_smallest_side(segmentation[..., None], self.size, "nearest")[..., 0]
        if self.crop_size is not None:
            h, w = image.shape[:2]
            if self.crop_size > min(h, w):
                raise ValueError(f"crop_size {self.crop_size} exceeds the rescaled image of {h}x{w}")
            top = random_int(h - self.crop_size + 1) if self.random_crop else (h - self.crop_size) // 2
            left = random_int(w - self.crop_size + 1) if self.random_crop else (w - self.crop_size) // 2
            image = image[top:top + self.crop_size, left:left + self.crop_size]
            segmentation = segmentation[top:top + self.crop_size, left:left + self.crop_size]
        if int(segmentation.max()) >= self.n_labels:
            raise ValueError(f"label map {self.segmentation_paths[i]!r} holds label {int(segmentation.max())}; "
                             f"n_labels={self.n_labels} allows 0..{self.n_labels - 1}")
        onehot = np.eye(self.n_labels, dtype=np.float32 if self.segmentation_to_float32 else np.float64)[segmentation]
        return {"image": to_float(image), "segmentation": onehot, "file_path_": self.image_paths[i],
                "segmentation_path_": self.segmentation_paths[i]}


class RFWTrain(RFWBase):
    """Training landscapes (random crops); the parameters are those of ``RFWBase``."""

    def __init__(self, size: int | None = None, crop_size: int | None = None, segmentation_to_float32: bool = False,
                 random_crop: bool = True, n_labels: int = 182, shift_segmentation: bool = False,
                 data_root: str = DATA_ROOT):
        super().__init__("train", size, crop_size, segmentation_to_float32, random_crop, n_labels, shift_segmentation,
                         data_root)


class RFWValidation(RFWBase):
    """Validation landscapes (centre crops); the parameters are those of ``RFWBase``."""

    def __init__(self, size: int | None = None, crop_size: int | None = None, segmentation_to_float32: bool = False,
                 random_crop: bool = False, n_labels: int = 182, shift_segmentation: bool = False,
                 data_root: str = DATA_ROOT):
        super().__init__("validation", size, crop_size, segmentation_to_float32, random_crop, n_labels,
                         shift_segmentation, data_root)
