"""The BSR degradation model: how the super-resolution data makes low-quality inputs.

Zhang, Liang, Van Gool, Timofte, "Designing a Practical Degradation Model for Deep Blind Image
Super-Resolution" (BSRGAN, ICCV 2021). A high-quality image is degraded by a randomly shuffled
sequence of blurs (isotropic and anisotropic Gaussian kernels), downsamplings (bilinear, bicubic,
area, or blur-then-nearest with a shifted kernel), Gaussian noise (colour, grey or channel-correlated)
and JPEG compression; the "plus" model adds resizing, speckle and Poisson noise and sharpening.

The probabilities and parameter ranges are those of the original, and random numbers are drawn from
Python's ``random`` and numpy's global generator in the same order, so ``random.seed`` +
``np.random.seed`` fix the result. OpenCV is replaced by the numpy/scipy/PIL equivalents in
`utils_image` (same pixel alignment; JPEG through PIL's libjpeg).
"""
from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import scipy.stats as ss
import torch
from scipy import ndimage
from scipy.linalg import orth

from ldm.modules.image_degradation import utils_image as util

#: The interpolations the original draws for each cv2.resize: bilinear, bicubic, area.
RESIZE_INTERPOLATIONS = (util.INTER_LINEAR, util.INTER_CUBIC, util.INTER_AREA)


# --------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------


def modcrop_np(img: np.ndarray, sf: int) -> np.ndarray:
    """Crop height and width down to multiples of the scale factor ``sf``."""
    return util.modcrop(img, sf)


def gm_blur_kernel(mean: Any, cov: np.ndarray, size: int = 15) -> np.ndarray:
    """A ``size``x``size`` kernel sampled from the 2-D Gaussian N(mean, cov), normalised to sum 1."""
    center = size / 2.0 + 0.5
    coords = np.arange(size) - center + 1
    cx, cy = np.meshgrid(coords, coords)  # kernel[y, x] is the density at (x, y)
    k = ss.multivariate_normal.pdf(np.stack([cx, cy], axis=-1), mean=mean, cov=cov)
    return k / np.sum(k)


def anisotropic_Gaussian(ksize: int = 15, theta: float = np.pi, l1: float = 6, l2: float = 6) -> np.ndarray:
    """Anisotropic Gaussian kernel with eigenvalues ``l1``, ``l2`` and orientation ``theta`` (radians)."""
    v = np.dot(np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]), np.array([1.0, 0.0]))
    V = np.array([[v[0], v[1]], [v[1], -v[0]]])
    D = np.array([[l1, 0], [0, l2]])
    Sigma = np.dot(np.dot(V, D), np.linalg.inv(V))
    return gm_blur_kernel(mean=[0, 0], cov=Sigma, size=ksize)


def fspecial_gaussian(hsize: int, sigma: float) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', hsize, sigma)``."""
    siz = [(hsize - 1.0) / 2.0, (hsize - 1.0) / 2.0]
    x, y = np.meshgrid(np.arange(-siz[1], siz[1] + 1), np.arange(-siz[0], siz[0] + 1))
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(float).eps * h.max()] = 0
    total = h.sum()
    return h / total if total != 0 else h


def fspecial_laplacian(alpha: float) -> np.ndarray:
    """MATLAB ``fspecial('laplacian', alpha)``: 3x3 Laplacian with shape parameter ``alpha`` in [0, 1]."""
    alpha = max(0.0, min(alpha, 1.0))
    h1 = alpha / (alpha + 1)
    h2 = (1 - alpha) / (alpha + 1)
    return np.array([[h1, h2, h1], [h2, -4 / (alpha + 1), h2], [h1, h2, h1]])


def fspecial(filter_type: str, *args: Any, **kwargs: Any) -> np.ndarray:
    """MATLAB ``fspecial`` for ``'gaussian'`` and ``'laplacian'``."""
    if filter_type == "gaussian":
        return fspecial_gaussian(*args, **kwargs)
    if filter_type == "laplacian":
        return fspecial_laplacian(*args, **kwargs)
    raise ValueError(f"filter_type must be 'gaussian' or 'laplacian'; got {filter_type!r}")


def _bilinear_matrix(positions: np.ndarray, length: int) -> np.ndarray:
    """Rows that linearly interpolate samples 0..length-1 at ``positions`` (inside [0, length-1])."""
    matrix = np.zeros((len(positions), length))
    left = np.clip(np.floor(positions).astype(np.int64), 0, max(length - 2, 0))
    frac = positions - left
    rows = np.arange(len(positions))
    np.add.at(matrix, (rows, left), 1 - frac)
    np.add.at(matrix, (rows, np.minimum(left + 1, length - 1)), frac)
    return matrix


def shift_pixel(x: np.ndarray, sf: int, upper_left: bool = True) -> np.ndarray:
    """Shift an image or kernel by (sf - 1) / 2 pixels with bilinear interpolation, so that blurring
    and then taking every ``sf``-th pixel stays centred (towards the upper left by default)."""
    h, w = x.shape[:2]
    shift = (sf - 1) * 0.5
    xv, yv = np.arange(0, w, 1.0), np.arange(0, h, 1.0)
    x1 = np.clip(xv + shift if upper_left else xv - shift, 0, w - 1)
    y1 = np.clip(yv + shift if upper_left else yv - shift, 0, h - 1)
    rows, cols = _bilinear_matrix(y1, h), _bilinear_matrix(x1, w)
    if x.ndim == 2:
        return rows @ x @ cols.T
    return np.stack([rows @ x[:, :, i] @ cols.T for i in range(x.shape[-1])], axis=-1)


# --------------------------------------------------------------------------------------------------
# classical degradations
# --------------------------------------------------------------------------------------------------


def bicubic_degradation(x: np.ndarray, sf: int = 3) -> np.ndarray:
    """MATLAB bicubic downsampling by ``sf``."""
    return util.imresize_np(x, scale=1 / sf)


def srmd_degradation(x: np.ndarray, k: np.ndarray, sf: int = 3) -> np.ndarray:
    """Blur with ``k`` (circular border), then bicubic downsampling (the SRMD model)."""
    x = ndimage.convolve(x, np.expand_dims(k, axis=2), mode="wrap")
    return bicubic_degradation(x, sf=sf)


def dpsr_degradation(x: np.ndarray, k: np.ndarray, sf: int = 3) -> np.ndarray:
    """Bicubic downsampling, then blur with ``k`` (the DPSR model)."""
    x = bicubic_degradation(x, sf=sf)
    return ndimage.convolve(x, np.expand_dims(k, axis=2), mode="wrap")


def classical_degradation(x: np.ndarray, k: np.ndarray, sf: int = 3) -> np.ndarray:
    """Blur with ``k``, then keep every ``sf``-th pixel."""
    x = ndimage.convolve(x, np.expand_dims(k, axis=2), mode="wrap")
    return x[0::sf, 0::sf, ...]


# --------------------------------------------------------------------------------------------------
# the random degradation steps (float32 HxWx3 images in [0, 1])
# --------------------------------------------------------------------------------------------------


def add_sharpening(img: np.ndarray, weight: float = 0.5, radius: int = 50, threshold: int = 10) -> np.ndarray:
    """Unsharp masking, applied only where the detail exceeds ``threshold``/255 (soft mask)."""
    if radius % 2 == 0:
        radius += 1
    blur = util.gaussian_blur(img, radius)
    residual = img - blur
    mask = (np.abs(residual) * 255 > threshold).astype("float32")
    soft_mask = util.gaussian_blur(mask, radius)
    sharpened = np.clip(img + weight * residual, 0, 1)
    return soft_mask * sharpened + (1 - soft_mask) * img


def add_blur(img: np.ndarray, sf: int = 4) -> np.ndarray:
    """Blur with a random anisotropic or isotropic Gaussian kernel (each with probability 1/2)."""
    wd2 = 4.0 + sf
    wd = 2.0 + 0.2 * sf
    if random.random() < 0.5:
        l1 = wd2 * random.random()
        l2 = wd2 * random.random()
        k = anisotropic_Gaussian(ksize=2 * random.randint(2, 11) + 3, theta=random.random() * np.pi, l1=l1, l2=l2)
    else:
        k = fspecial("gaussian", 2 * random.randint(2, 11) + 3, wd * random.random())
    return ndimage.convolve(img, np.expand_dims(k, axis=2), mode="mirror")


def add_resize(img: np.ndarray, sf: int = 4) -> np.ndarray:
    """Random resize: up by [1, 2] (p=0.2), down by [0.5/sf, 1] (p=0.7), or unchanged (p=0.1)."""
    rnum = np.random.rand()
    if rnum > 0.8:
        sf1 = random.uniform(1, 2)
    elif rnum < 0.7:
        sf1 = random.uniform(0.5 / sf, 1)
    else:
        sf1 = 1.0
    img = util.resize(img, (int(sf1 * img.shape[1]), int(sf1 * img.shape[0])),
                      interpolation=random.choice(RESIZE_INTERPOLATIONS))
    return np.clip(img, 0.0, 1.0)


def _correlated_noise(shape: tuple[int, ...], level: float) -> np.ndarray:
    """Gaussian noise whose 3 channels are correlated through a random covariance scaled by ``level``^2."""
    D = np.diag(np.random.rand(3))
    U = orth(np.random.rand(3, 3))
    conv = np.dot(np.dot(np.transpose(U), D), U)
    return np.random.multivariate_normal([0, 0, 0], np.abs(level ** 2 * conv), shape[:2]).astype(np.float32)


def add_Gaussian_noise(img: np.ndarray, noise_level1: int = 2, noise_level2: int = 25) -> np.ndarray:
    """Additive Gaussian noise, sigma in [noise_level1, noise_level2]/255: per channel (p=0.4), the
    same for all channels (p=0.4), or channel-correlated at sigma noise_level2/255 (p=0.2)."""
    noise_level = random.randint(noise_level1, noise_level2)
    rnum = np.random.rand()
    if rnum > 0.6:
        img = img + np.random.normal(0, noise_level / 255.0, img.shape).astype(np.float32)
    elif rnum < 0.4:
        img = img + np.random.normal(0, noise_level / 255.0, (*img.shape[:2], 1)).astype(np.float32)
    else:
        img = img + _correlated_noise(img.shape, noise_level2 / 255.0)
    return np.clip(img, 0.0, 1.0)


def add_speckle_noise(img: np.ndarray, noise_level1: int = 2, noise_level2: int = 25) -> np.ndarray:
    """Multiplicative (speckle) noise, with the same three cases as `add_Gaussian_noise`."""
    noise_level = random.randint(noise_level1, noise_level2)
    img = np.clip(img, 0.0, 1.0)
    rnum = random.random()
    if rnum > 0.6:
        img = img + img * np.random.normal(0, noise_level / 255.0, img.shape).astype(np.float32)
    elif rnum < 0.4:
        img = img + img * np.random.normal(0, noise_level / 255.0, (*img.shape[:2], 1)).astype(np.float32)
    else:
        img = img + img * _correlated_noise(img.shape, noise_level2 / 255.0)
    return np.clip(img, 0.0, 1.0)


def add_Poisson_noise(img: np.ndarray) -> np.ndarray:
    """Poisson (shot) noise at 10^[2, 4] photons per unit: per channel or on the luma (p=1/2 each)."""
    img = np.clip((img * 255.0).round(), 0, 255) / 255.0
    vals = 10 ** (2 * random.random() + 2.0)
    if random.random() < 0.5:
        img = np.random.poisson(img * vals).astype(np.float32) / vals
    else:
        img_gray = np.dot(img[..., :3], [0.299, 0.587, 0.114])
        img_gray = np.clip((img_gray * 255.0).round(), 0, 255) / 255.0
        noise_gray = np.random.poisson(img_gray * vals).astype(np.float32) / vals - img_gray
        img += noise_gray[:, :, np.newaxis]  # in place: the image stays float32
    return np.clip(img, 0.0, 1.0)


def add_JPEG_noise(img: np.ndarray, quality_range: tuple[int, int] = (30, 95)) -> np.ndarray:
    """JPEG compression at a random quality factor in ``quality_range`` (inclusive)."""
    quality_factor = random.randint(*quality_range)
    return util.uint2single(util.jpeg_compress(util.single2uint(img), quality_factor))


def random_crop(lq: np.ndarray, hq: np.ndarray, sf: int = 4, lq_patchsize: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Aligned random crops: ``lq_patchsize`` from ``lq`` and ``lq_patchsize * sf`` from ``hq``."""
    h, w = lq.shape[:2]
    rnd_h = random.randint(0, h - lq_patchsize)
    rnd_w = random.randint(0, w - lq_patchsize)
    lq = lq[rnd_h:rnd_h + lq_patchsize, rnd_w:rnd_w + lq_patchsize, :]
    rnd_h_hq, rnd_w_hq = int(rnd_h * sf), int(rnd_w * sf)
    hq = hq[rnd_h_hq:rnd_h_hq + lq_patchsize * sf, rnd_w_hq:rnd_w_hq + lq_patchsize * sf, :]
    return lq, hq


# --------------------------------------------------------------------------------------------------
# the degradation pipelines
# --------------------------------------------------------------------------------------------------


def _mod_crop(img: np.ndarray, sf: int) -> np.ndarray:
    # The original sliced [:w - w % sf, :h - h % sf], swapping height and width; that only matters for
    # non-square images, where it cropped them to a square. Here height and width are cropped correctly.
    return util.modcrop(img, sf)


def _halve(img: np.ndarray) -> np.ndarray:
    """"downsample1" of BSRGAN: halve the size with cv2 (bilinear/bicubic/area) or MATLAB bicubic."""
    if np.random.rand() < 0.5:
        img = util.resize(img, (int(1 / 2 * img.shape[1]), int(1 / 2 * img.shape[0])),
                          interpolation=random.choice(RESIZE_INTERPOLATIONS))
    else:
        img = util.imresize_np(img, 1 / 2, True)
    return np.clip(img, 0.0, 1.0)


def _downsample_random(img: np.ndarray, sf: int, resize_prob: float) -> np.ndarray:
    """"downsample2": a cv2 resize by a random factor in [1, 2 sf] (p=``resize_prob``), else a blur with
    a shifted Gaussian kernel followed by nearest downsampling by ``sf``."""
    if random.random() < resize_prob:
        sf1 = random.uniform(1, 2 * sf)
        img = util.resize(img, (int(1 / sf1 * img.shape[1]), int(1 / sf1 * img.shape[0])),
                          interpolation=random.choice(RESIZE_INTERPOLATIONS))
    else:
        k = fspecial("gaussian", 25, random.uniform(0.1, 0.6 * sf))
        k_shifted = shift_pixel(k, sf)
        k_shifted = k_shifted / k_shifted.sum()
        img = ndimage.convolve(img, np.expand_dims(k_shifted, axis=2), mode="mirror")
        img = img[0::sf, 0::sf, ...]
    return np.clip(img, 0.0, 1.0)


def _shuffled_steps() -> list[int]:
    """A random order of the 7 steps in which downsample2 (2) always comes before downsample3 (3)."""
    shuffle_order = random.sample(range(7), 7)
    idx1, idx2 = shuffle_order.index(2), shuffle_order.index(3)
    if idx1 > idx2:
        shuffle_order[idx1], shuffle_order[idx2] = shuffle_order[idx2], shuffle_order[idx1]
    return shuffle_order


def degrade_variant(image: np.ndarray, sf: int, blur: Callable[[np.ndarray, int], np.ndarray],
                    jpeg: Callable[[np.ndarray], np.ndarray], blur_twice: bool, downsample2_prob: float,
                    noise_levels: tuple[int, int], jpeg_prob: float = 0.9, scale2_prob: float = 0.25) -> np.ndarray:
    """The shared body of `degradation_bsrgan_variant` and its light version; float32 in, float32 out.

    ``blur``/``jpeg``: the blur and JPEG steps; ``blur_twice``: whether step 1 is a second blur (the light
    version skips it); ``downsample2_prob``: probability of the cv2 resize in downsample2;
    ``noise_levels``: Gaussian noise range (in /255).
    """
    image = _mod_crop(image, sf)
    if sf == 4 and random.random() < scale2_prob:
        image = _halve(image)
        sf = 2
    a = b = 0
    for i in _shuffled_steps():
        if i == 0 or (i == 1 and blur_twice):
            image = blur(image, sf)
        elif i == 2:
            a, b = image.shape[1], image.shape[0]
            image = _downsample_random(image, sf, downsample2_prob)
        elif i == 3:  # downsample3: to 1/sf of the size before downsample2
            image = util.resize(image, (int(1 / sf * a), int(1 / sf * b)),
                                interpolation=random.choice(RESIZE_INTERPOLATIONS))
            image = np.clip(image, 0.0, 1.0)
        elif i == 4:
            image = add_Gaussian_noise(image, noise_level1=noise_levels[0], noise_level2=noise_levels[1])
        elif i == 5:
            if random.random() < jpeg_prob:
                image = jpeg(image)
    return jpeg(image)  # final JPEG compression


def degradation_bsrgan_variant(image: np.ndarray, sf: int = 4, isp_model: Any = None) -> dict[str, np.ndarray]:
    """Degrade a uint8 HxWx3 image into a low-quality one of size (H/sf, W/sf): {"image": uint8 array}.

    The variant the LDM super-resolution data uses: two blurs, two downsamplings, Gaussian noise and
    JPEG in random order, then a final JPEG. ``isp_model`` (camera sensor noise) is accepted for API
    compatibility and, as in the original variant, not used.
    """
    image = util.uint2single(image)
    image = degrade_variant(image, sf, add_blur, add_JPEG_noise, blur_twice=True, downsample2_prob=0.75,
                            noise_levels=(2, 25))
    return {"image": util.single2uint(image)}


def degradation_bsrgan(img: np.ndarray, sf: int = 4, lq_patchsize: int = 72,
                       isp_model: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """BSRGAN's degradation with aligned random crops: float32 [0, 1] HxWx3 in, (lq, hq) patches out.

    ``isp_model``: optional camera-pipeline model with ``forward(img, hq) -> (img, hq)``, applied with
    probability 0.25.
    """
    isp_prob, jpeg_prob, scale2_prob = 0.25, 0.9, 0.25
    sf_ori = sf
    h1, w1 = img.shape[:2]
    img = _mod_crop(img, sf)
    h, w = img.shape[:2]
    if h < lq_patchsize * sf or w < lq_patchsize * sf:
        raise ValueError(f"img size ({h1}X{w1}) is too small for lq_patchsize={lq_patchsize} at sf={sf}")
    hq = img.copy()
    if sf == 4 and random.random() < scale2_prob:
        img = _halve(img)
        sf = 2
    a = b = 0
    for i in _shuffled_steps():
        if i in (0, 1):
            img = add_blur(img, sf=sf)
        elif i == 2:
            a, b = img.shape[1], img.shape[0]
            img = _downsample_random(img, sf, 0.75)
        elif i == 3:
            img = util.resize(img, (int(1 / sf * a), int(1 / sf * b)),
                              interpolation=random.choice(RESIZE_INTERPOLATIONS))
            img = np.clip(img, 0.0, 1.0)
        elif i == 4:
            img = add_Gaussian_noise(img, noise_level1=2, noise_level2=25)
        elif i == 5:
            if random.random() < jpeg_prob:
                img = add_JPEG_noise(img)
        elif i == 6:
            if random.random() < isp_prob and isp_model is not None:
                img, hq = _apply_isp(isp_model, img, hq)
    img = add_JPEG_noise(img)
    return random_crop(img, hq, sf_ori, lq_patchsize)


def _apply_isp(isp_model: Any, img: np.ndarray, hq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        return isp_model.forward(img.copy(), hq)


def degradation_bsrgan_plus(img: np.ndarray, sf: int = 4, shuffle_prob: float = 0.5, use_sharp: bool = True,
                            lq_patchsize: int = 64, isp_model: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The extended BSRGAN model: two rounds of blur, resize, Gaussian/Poisson/speckle/camera noise
    and JPEG (fully shuffled with probability ``shuffle_prob``, else only the noises shuffled), an
    optional sharpening of the target first (``use_sharp``); float32 [0, 1] in, (lq, hq) patches out."""
    h1, w1 = img.shape[:2]
    img = _mod_crop(img, sf)
    h, w = img.shape[:2]
    if h < lq_patchsize * sf or w < lq_patchsize * sf:
        raise ValueError(f"img size ({h1}X{w1}) is too small for lq_patchsize={lq_patchsize} at sf={sf}")
    if use_sharp:
        img = add_sharpening(img)
    hq = img.copy()
    if random.random() < shuffle_prob:
        shuffle_order = random.sample(range(13), 13)
    else:
        shuffle_order = list(range(13))
        shuffle_order[2:6] = random.sample(shuffle_order[2:6], len(range(2, 6)))
        shuffle_order[9:13] = random.sample(shuffle_order[9:13], len(range(9, 13)))
    poisson_prob, speckle_prob, isp_prob = 0.1, 0.1, 0.1
    for i in shuffle_order:
        step = i if i < 7 else i - 7  # steps 7..12 repeat steps 0..5
        if i == 6:
            img = add_JPEG_noise(img)
        elif step == 0:
            img = add_blur(img, sf=sf)
        elif step == 1:
            img = add_resize(img, sf=sf)
        elif step == 2:
            img = add_Gaussian_noise(img, noise_level1=2, noise_level2=25)
        elif step == 3:
            if random.random() < poisson_prob:
                img = add_Poisson_noise(img)
        elif step == 4:
            if random.random() < speckle_prob:
                img = add_speckle_noise(img)
        elif step == 5:
            if random.random() < isp_prob and isp_model is not None:
                img, hq = _apply_isp(isp_model, img, hq)
    img = util.resize(img, (int(1 / sf * hq.shape[1]), int(1 / sf * hq.shape[0])),
                      interpolation=random.choice(RESIZE_INTERPOLATIONS))
    img = add_JPEG_noise(img)
    return random_crop(img, hq, sf, lq_patchsize)
