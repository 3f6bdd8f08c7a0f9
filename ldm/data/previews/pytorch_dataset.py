"""``PreviewsTrain`` / ``PreviewsValidation``: the caption datasets that ``models/ldm/text2img256/config.yaml``
names (text-to-image latent diffusion, Rombach et al., CVPR 2022).

The original's image/caption collection was never released. These classes read a local table of
image files and captions, as ``ldm.data.custom.ImageCaptionDataset`` does: by default
``data/previews/train.jsonl`` and ``data/previews/validation.jsonl``, one
``{"file_name": "<path relative to the file>", "caption": "..."}`` object per line (CSV/TSV/JSON work too).
Examples hold ``image`` (square, ``size``) and ``caption``.
"""
from __future__ import annotations

from ldm.data.custom import ImageCaptionDataset


class PreviewsTrain(ImageCaptionDataset):
    """Training image/caption pairs (random crops)."""

    def __init__(
        self,
        size: int | None = 256,                      # output side length
        file: str = "data/previews/train.jsonl",     # table of image paths and captions
        random_crop: bool = True,                    # random instead of centred square crop
        image_root: str | None = None,               # folder the image paths are relative to (default: the table's)
    ):
        super().__init__(file=file, size=size, random_crop=random_crop, image_root=image_root)


class PreviewsValidation(ImageCaptionDataset):
    """Validation image/caption pairs (centre crops)."""

    def __init__(
        self,
        size: int | None = 256,                      # output side length
        file: str = "data/previews/validation.jsonl",  # table of image paths and captions
        random_crop: bool = False,                   # random instead of centred square crop
        image_root: str | None = None,               # folder the image paths are relative to (default: the table's)
    ):
        super().__init__(file=file, size=size, random_crop=random_crop, image_root=image_root)
