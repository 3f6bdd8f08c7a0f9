"""The lighter BSR degradation used for the LDM super-resolution data.

A milder version of the BSRGAN model (Zhang et al., "Designing a Practical Degradation Model for Deep
Blind Image Super-Resolution", ICCV 2021), as shipped with latent diffusion: one blur with kernels a
quarter as wide, downsample2 by cv2 resize with probability 0.8, Gaussian noise of only 1-2/255, and
JPEG qualities in [80, 95]. The other pieces are those of `bsrgan`.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
from scipy import ndimage

from ldm.modules.image_degradation import utils_image as util
from ldm.modules.image_degradation.bsrgan import (add_Gaussian_noise, add_Poisson_noise, add_resize,
                                                  add_speckle_noise, anisotropic_Gaussian, degrade_variant,
                                                  fspecial, shift_pixel)

__all__ = ["add_blur", "add_JPEG_noise", "degradation_bsrgan_variant", "JPEG_QUALITY_RANGE",
           # shared with the full model
           "add_Gaussian_noise", "add_Poisson_noise", "add_resize", "add_speckle_noise", "anisotropic_Gaussian",
           "fspecial", "shift_pixel"]

#: JPEG quality range of the light model (the full model uses 30..95).
JPEG_QUALITY_RANGE = (80, 95)


def add_blur(img: np.ndarray, sf: int = 4) -> np.ndarray:
    """Blur with a random anisotropic or isotropic Gaussian kernel, a quarter as wide as in `bsrgan`."""
    wd2 = (4.0 + sf) / 4
    wd = (2.0 + 0.2 * sf) / 4
    if random.random() < 0.5:
        l1 = wd2 * random.random()
        l2 = wd2 * random.random()
        k = anisotropic_Gaussian(ksize=random.randint(2, 11) + 3, theta=random.random() * np.pi, l1=l1, l2=l2)
    else:
        k = fspecial("gaussian", random.randint(2, 4) + 3, wd * random.random())
    return ndimage.convolve(img, np.expand_dims(k, axis=2), mode="mirror")


def add_JPEG_noise(img: np.ndarray) -> np.ndarray:
    """JPEG compression at a random quality factor in [80, 95]."""
    quality_factor = random.randint(*JPEG_QUALITY_RANGE)
    return util.uint2single(util.jpeg_compress(util.single2uint(img), quality_factor))


def degradation_bsrgan_variant(image: np.ndarray, sf: int = 4, isp_model: Any = None,
                               up: bool = False) -> dict[str, np.ndarray]:
    """Degrade a uint8 HxWx3 image into a low-quality one of size (H/sf, W/sf): {"image": uint8 array}.

    ``isp_model`` is accepted for API compatibility and not used; ``up``: resize the result back to
    the input size with bicubic interpolation.
    """
    h1, w1 = image.shape[:2]
    image = util.uint2single(image)
    image = degrade_variant(image, sf, add_blur, add_JPEG_noise, blur_twice=False, downsample2_prob=0.8,
                            noise_levels=(1, 2))
    image = util.single2uint(image)
    if up:
        image = util.resize(image, (w1, h1), interpolation=util.INTER_CUBIC)
    return {"image": image}
