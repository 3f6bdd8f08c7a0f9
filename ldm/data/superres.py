"""High/low-resolution image pairs for super-resolution training (the LDM-SR of Rombach et al., CVPR 2022).

``SuperResolutionPipeline`` turns one uint8 image into the pair the original ``ImageNetSR`` made:
crop a square whose side is a random fraction in [min_crop_f, max_crop_f] of the smaller image side,
rescale it to ``size`` (area filter), and degrade it by ``downscale_f`` into ``LR_image``, either by a
plain resize (``pil_*``, ``cv_*``) or by the BSR-degradation pipeline (``bsrgan``, ``bsrgan_light``,
Zhang et al., "Designing a Practical Degradation Model for Deep Blind Image Super-Resolution", 2021).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from ldm.data.base import check_size, crop, random_float, to_float

#: PIL filters of the ``pil_*`` degradations.
PIL_DEGRADATIONS = {
    "pil_nearest": Image.Resampling.NEAREST,
    "pil_bilinear": Image.Resampling.BILINEAR,
    "pil_bicubic": Image.Resampling.BICUBIC,
    "pil_box": Image.Resampling.BOX,
    "pil_hamming": Image.Resampling.HAMMING,
    "pil_lanczos": Image.Resampling.LANCZOS,
}

#: OpenCV interpolation flag names of the ``cv_*`` degradations, with the PIL filter used when
#: OpenCV is not installed (PIL's box filter is its closest match of INTER_AREA).
CV_DEGRADATIONS = {
    "cv_nearest": ("INTER_NEAREST", Image.Resampling.NEAREST),
    "cv_bilinear": ("INTER_LINEAR", Image.Resampling.BILINEAR),
    "cv_bicubic": ("INTER_CUBIC", Image.Resampling.BICUBIC),
    "cv_area": ("INTER_AREA", Image.Resampling.BOX),
    "cv_lanczos": ("INTER_LANCZOS4", Image.Resampling.LANCZOS),
}

BSR_DEGRADATIONS = ("bsrgan", "bsrgan_light")

DEGRADATIONS = BSR_DEGRADATIONS + tuple(CV_DEGRADATIONS) + tuple(PIL_DEGRADATIONS)


def _cv2_or_none():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _resize_square(image: np.ndarray, side: int, cv_flag: str, pil_filter: Image.Resampling) -> np.ndarray:
    """Resize a square uint8 image to ``side`` with OpenCV's ``cv_flag`` when available, else PIL."""
    cv2 = _cv2_or_none()
    if cv2 is not None:
        return cv2.resize(image, (side, side), interpolation=getattr(cv2, cv_flag))
    return np.asarray(Image.fromarray(image).resize((side, side), resample=pil_filter))


def _bsr_degradation(name: str, downscale_f: int) -> Callable[[np.ndarray], np.ndarray]:
    """The BSR degradation function of ``ldm.modules.image_degradation``, imported when first used."""
    if name == "bsrgan":
        from ldm.modules.image_degradation.bsrgan import degradation_bsrgan_variant
    else:
        from ldm.modules.image_degradation.bsrgan_light import degradation_bsrgan_variant

    def degrade(image: np.ndarray) -> np.ndarray:
        out = degradation_bsrgan_variant(image, sf=downscale_f)
        return out["image"] if isinstance(out, dict) else out

    return degrade


class SuperResolutionPipeline:
    """Crop, rescale and degrade a uint8 ``(H, W, 3)`` image into ``(image, LR_image)`` in [-1, 1]."""

    def __init__(
        self,
        size: int,                                   # side of the high-resolution output
        degradation: str,                            # one of DEGRADATIONS: how LR_image is made
        downscale_f: int = 4,                        # size / downscale_f is the side of LR_image
        min_crop_f: float = 0.5,                     # smallest crop, as a fraction of the smaller image side
        max_crop_f: float = 1.0,                     # largest crop fraction (at most 1)
        random_crop: bool = True,                    # random crop position instead of the centre
    ):
        check_size(size)
        if size is None:
            raise ValueError("size must be a positive integer; got None")
        if not isinstance(downscale_f, (int, float)) or downscale_f <= 0 or not float(size / downscale_f).is_integer():
            raise ValueError(f"downscale_f must divide size={size} into an integer; got {downscale_f!r}")
        if not 0 < min_crop_f <= max_crop_f <= 1.0:
            raise ValueError(f"need 0 < min_crop_f <= max_crop_f <= 1; got min_crop_f={min_crop_f}, "
                             f"max_crop_f={max_crop_f}")
        if degradation not in DEGRADATIONS:
            raise ValueError(f"degradation must be one of {', '.join(DEGRADATIONS)}; got {degradation!r}")
        self.size = size
        self.LR_size = int(size / downscale_f)
        self.downscale_f = downscale_f
        self.min_crop_f = min_crop_f
        self.max_crop_f = max_crop_f
        self.random_crop = random_crop
        self.degradation = degradation
        self._bsr = _bsr_degradation(degradation, int(downscale_f)) if degradation in BSR_DEGRADATIONS else None

    def degrade(self, image: np.ndarray) -> np.ndarray:
        """The low-resolution uint8 counterpart of a ``size x size`` uint8 image."""
        if self._bsr is not None:
            return np.asarray(self._bsr(image)).astype(np.uint8)
        if self.degradation in PIL_DEGRADATIONS:
            return np.asarray(Image.fromarray(image).resize((self.LR_size, self.LR_size),
                                                            resample=PIL_DEGRADATIONS[self.degradation]))
        return _resize_square(image, self.LR_size, *CV_DEGRADATIONS[self.degradation])

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        crop_side = max(1, int(min(image.shape[:2]) * random_float(self.min_crop_f, self.max_crop_f)))
        image = crop(image, crop_side, crop_side, self.random_crop)
        image = _resize_square(image, self.size, *CV_DEGRADATIONS["cv_area"])
        lr_image = self.degrade(image)
        return to_float(image), to_float(lr_image)
