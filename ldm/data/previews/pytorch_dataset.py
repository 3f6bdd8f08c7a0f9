"""``PreviewsTrain`` / ``PreviewsValidation``: the caption datasets that ``models/ldm/text2img256/config.yaml``
names (text-to-image latent diffusion, Rombach et al., CVPR 2022).

The original's image/caption collection was never released. These classes read a local table of
image files and captions, as ``ldm.data.custom.ImageCaptionDataset`` does: by default
``data/previews/train.jsonl`` and ``data/previews/validation.jsonl``, one
``{"file_name": "<path relative to the file>", "caption": "..."}`` object per line (CSV/TSV/JSON work too).
Examples hold ``image`` (square, ``size``) and ``caption``.
"""
from __future__ import annotations

from ldm.data.base import split_class
from ldm.data.custom import ImageCaptionDataset


#: The parameters of both splits, in order: side length (default 256), table file, random instead of
#: centred square crop, folder the image paths are relative to (default: the table's).
_PARAMS = ("size", "file", "random_crop", "image_root")

PreviewsTrain = split_class(ImageCaptionDataset, "PreviewsTrain", "Training image/caption pairs (random crops).",
                            __name__, params=_PARAMS,
                            defaults={"size": 256, "file": "data/previews/train.jsonl", "random_crop": True})
PreviewsValidation = split_class(ImageCaptionDataset, "PreviewsValidation",
                                 "Validation image/caption pairs (centre crops).", __name__, params=_PARAMS,
                                 defaults={"size": 256, "file": "data/previews/validation.jsonl", "random_crop": False})
