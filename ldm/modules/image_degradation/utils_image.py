"""Image helpers for the BSR degradation model.

The subset of KAIR's ``utils_image`` that BSRGAN ("Designing a Practical Degradation Model for Deep
Blind Image Super-Resolution", Zhang et al., ICCV 2021) relies on: uint8 <-> float conversions, the
MATLAB-style antialiased bicubic ``imresize_np``, and replacements for the three OpenCV calls the
original makes (``cv2.resize`` with nearest/linear/cubic/area interpolation, ``cv2.GaussianBlur`` and a
JPEG encode/decode round trip), written with numpy, scipy and PIL so that OpenCV is not needed.

Images are numpy arrays, HxWxC (or HxW), RGB; "single" means float32 in [0, 1], "uint" means uint8.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

# OpenCV's interpolation codes, which the degradation draws with ``random.choice([1, 2, 3])``.
INTER_NEAREST = 0
INTER_LINEAR = 1
INTER_CUBIC = 2
INTER_AREA = 3
_INTERPOLATIONS = {INTER_NEAREST: "nearest", INTER_LINEAR: "linear", INTER_CUBIC: "cubic", INTER_AREA: "area"}
_CUBIC_A = -0.75  # OpenCV's bicubic coefficient (MATLAB uses -0.5, see `cubic`)


# --------------------------------------------------------------------------------------------------
# dtype and layout conversions
# --------------------------------------------------------------------------------------------------


def uint2single(img: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return np.float32(img / 255.0)


def single2uint(img: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 [0, 255], clipped and rounded."""
    return np.uint8((img.clip(0, 1) * 255.0).round())


def uint162single(img: np.ndarray) -> np.ndarray:
    """uint16 [0, 65535] -> float32 [0, 1]."""
    return np.float32(img / 65535.0)


def single2uint16(img: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint16 [0, 65535], clipped and rounded."""
    return np.uint16((img.clip(0, 1) * 65535.0).round())


def uint2tensor3(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWxC (or HxW) -> float tensor CxHxW in [0, 1]."""
    if img.ndim == 2:
        img = img[..., None]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255.0)


def uint2tensor4(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWxC (or HxW) -> float tensor 1xCxHxW in [0, 1]."""
    return uint2tensor3(img).unsqueeze(0)


def single2tensor3(img: np.ndarray) -> torch.Tensor:
    """float HxWxC (or HxW) -> float tensor CxHxW."""
    if img.ndim == 2:
        img = img[..., None]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()


def single2tensor4(img: np.ndarray) -> torch.Tensor:
    """float HxWxC (or HxW) -> float tensor 1xCxHxW."""
    return single2tensor3(img).unsqueeze(0)


def tensor2single(img: torch.Tensor) -> np.ndarray:
    """Tensor (1x)CxHxW -> float32 HxWxC (HxW for one channel)."""
    img = img.detach().squeeze().float().cpu().numpy()
    return np.transpose(img, (1, 2, 0)) if img.ndim == 3 else img


def tensor2uint(img: torch.Tensor) -> np.ndarray:
    """Tensor (1x)CxHxW in [0, 1] -> uint8 HxWxC (HxW for one channel)."""
    return single2uint(tensor2single(img.clamp(0, 1)))


# --------------------------------------------------------------------------------------------------
# cropping, augmentation, PSNR
# --------------------------------------------------------------------------------------------------


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop height and width down to multiples of ``scale``."""
    if img.ndim not in (2, 3):
        raise ValueError(f"modcrop expects an HxW or HxWxC image; got shape {img.shape}")
    h, w = img.shape[:2]
    return np.copy(img[: h - h % scale, : w - w % scale, ...])


#: mode -> (quarter turns, flip upside down afterwards), the 8 flips/rotations of KAIR's augment_img
_AUGMENT_MODES = {0: (0, False), 1: (1, True), 2: (0, True), 3: (3, False),
                  4: (2, True), 5: (1, False), 6: (2, False), 7: (3, True)}


def augment_img(img: np.ndarray, mode: int = 0) -> np.ndarray:
    """One of the 8 flips/rotations of the dihedral group (mode 0 is the identity)."""
    if mode not in _AUGMENT_MODES:
        raise ValueError(f"mode must be in 0..7; got {mode!r}")
    turns, flip = _AUGMENT_MODES[mode]
    img = np.rot90(img, k=turns)
    return np.flipud(img) if flip else img


def calculate_psnr(img1: np.ndarray, img2: np.ndarray, border: int = 0) -> float:
    """PSNR in dB between two images in [0, 255], ignoring ``border`` pixels at each edge."""
    if img1.shape != img2.shape:
        raise ValueError(f"input images must have the same shape; got {img1.shape} and {img2.shape}")
    h, w = img1.shape[:2]
    img1 = img1[border: h - border, border: w - border].astype(np.float64)
    img2 = img2[border: h - border, border: w - border].astype(np.float64)
    mse = np.mean((img1 - img2) ** 2)
    return float("inf") if mse == 0 else 20 * math.log10(255.0 / math.sqrt(mse))


# --------------------------------------------------------------------------------------------------
# MATLAB imresize (bicubic, antialiased)
# --------------------------------------------------------------------------------------------------


def cubic(x: np.ndarray) -> np.ndarray:
    """MATLAB's bicubic kernel (a = -0.5)."""
    absx = np.abs(x)
    absx2, absx3 = absx ** 2, absx ** 3
    return ((1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
            + (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2)))


def calculate_weights_indices(in_length: int, out_length: int, scale: float, kernel_width: float = 4.0,
                              antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB imresize's contributions: per output pixel, the 0-based input indices (possibly outside
    the image, to be reflected) and their normalised weights; both (out_length, P)."""
    if scale < 1 and antialiasing:  # widen the kernel to low-pass filter while shrinking
        kernel_width = kernel_width / scale
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = np.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    distance = u[:, None] - indices
    weights = scale * cubic(distance * scale) if scale < 1 and antialiasing else cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    return weights, indices.astype(np.int64) - 1


def _reflect_symmetric(idx: np.ndarray, length: int) -> np.ndarray:
    """Indices outside [0, length) mirrored with the edge repeated (MATLAB 'symmetric' padding)."""
    period = 2 * length
    idx = np.mod(idx, period)
    return np.where(idx >= length, period - 1 - idx, idx)


def _imresize_matrix(in_length: int, out_length: int, scale: float, antialiasing: bool) -> np.ndarray:
    weights, indices = calculate_weights_indices(in_length, out_length, scale, 4.0, antialiasing)
    matrix = np.zeros((out_length, in_length))
    rows = np.repeat(np.arange(out_length), weights.shape[1])
    np.add.at(matrix, (rows, _reflect_symmetric(indices, in_length).ravel()), weights.ravel())
    return matrix


def _apply_separable(img: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``rows @ img @ cols.T`` over the spatial axes of an HxW or HxWxC image."""
    squeeze = img.ndim == 2
    x = img[..., None] if squeeze else img
    h, w, c = x.shape
    tmp = (rows @ x.reshape(h, w * c)).reshape(rows.shape[0], w, c)
    out = np.matmul(cols, tmp)
    return out[..., 0] if squeeze else out


def imresize_np(img: np.ndarray, scale: float, antialiasing: bool = True) -> np.ndarray:
    """MATLAB ``imresize(img, scale, 'bicubic')`` on a float HxWxC/HxW image in [0, 1]; not rounded.

    The output size is ``ceil(size * scale)``; borders are extended symmetrically as MATLAB does.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive; got {scale}")
    in_h, in_w = img.shape[:2]
    out_h, out_w = math.ceil(in_h * scale), math.ceil(in_w * scale)
    rows = _imresize_matrix(in_h, out_h, scale, antialiasing)
    cols = _imresize_matrix(in_w, out_w, scale, antialiasing)
    return _apply_separable(img.astype(np.float64), rows, cols).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# cv2.resize, cv2.GaussianBlur and JPEG without OpenCV
# --------------------------------------------------------------------------------------------------


def _cubic_coeffs(fx: np.ndarray) -> np.ndarray:
    """OpenCV's bicubic weights for the taps at sx-1, sx, sx+1, sx+2 (``interpolateCubic``)."""
    a = _CUBIC_A
    c0 = ((a * (fx + 1) - 5 * a) * (fx + 1) + 8 * a) * (fx + 1) - 4 * a
    c1 = ((a + 2) * fx - (a + 3)) * fx * fx + 1
    c2 = ((a + 2) * (1 - fx) - (a + 3)) * (1 - fx) * (1 - fx) + 1
    return np.stack([c0, c1, c2, 1 - c0 - c1 - c2], axis=1)


def _cv2_resize_matrix(in_length: int, out_length: int, interpolation: int, area_shrink: bool) -> np.ndarray:
    """The (out_length, in_length) matrix of ``cv2.resize`` along one axis (borders replicated)."""
    inv_scale = out_length / in_length
    scale = 1.0 / inv_scale
    dx = np.arange(out_length, dtype=np.float64)
    matrix = np.zeros((out_length, in_length))
    rows = np.arange(out_length)
    if interpolation == INTER_NEAREST:
        matrix[rows, np.minimum(np.floor(dx * scale).astype(np.int64), in_length - 1)] = 1.0
        return matrix
    if interpolation == INTER_AREA and area_shrink:  # box average over each output cell
        for d in range(out_length):
            fsx1 = d * scale
            fsx2 = fsx1 + scale
            cell = min(scale, in_length - fsx1)
            sx2 = min(math.floor(fsx2), in_length - 1)
            sx1 = min(math.ceil(fsx1), sx2)
            if sx1 - fsx1 > 1e-3:
                matrix[d, sx1 - 1] += (sx1 - fsx1) / cell
            matrix[d, sx1:sx2] += 1.0 / cell
            if fsx2 - sx2 > 1e-3:
                matrix[d, sx2] += min(fsx2 - sx2, 1.0, cell) / cell
        return matrix
    if interpolation == INTER_AREA:  # enlarging with INTER_AREA: OpenCV's "area mode" linear weights
        sx = np.floor(dx * scale)
        fx = ((dx + 1) - (sx + 1) * inv_scale).astype(np.float32)
        fx = np.where(fx <= 0, 0.0, fx - np.floor(fx))
    else:
        fx = ((dx + 0.5) * scale - 0.5).astype(np.float32)
        sx = np.floor(fx)
        fx = fx - sx
    sx = sx.astype(np.int64)
    if interpolation == INTER_CUBIC:
        coeffs = _cubic_coeffs(fx.astype(np.float64))
        for k in range(4):
            np.add.at(matrix, (rows, np.clip(sx - 1 + k, 0, in_length - 1)), coeffs[:, k])
        return matrix
    fx = np.where((sx < 0) | (sx >= in_length - 1), 0.0, fx).astype(np.float64)
    sx = np.clip(sx, 0, in_length - 1)
    np.add.at(matrix, (rows, sx), 1 - fx)
    np.add.at(matrix, (rows, np.minimum(sx + 1, in_length - 1)), fx)
    return matrix


def resize(img: np.ndarray, dsize: tuple[int, int], interpolation: int = INTER_LINEAR) -> np.ndarray:
    """``cv2.resize(img, dsize, interpolation=...)`` for float or uint8 HxW(xC) images.

    ``dsize`` is (width, height) as in OpenCV. Pixel centres are aligned as OpenCV aligns them and
    borders are replicated; INTER_AREA averages over each output cell when shrinking both axes.
    """
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS} (OpenCV codes); got {interpolation!r}")
    out_w, out_h = int(dsize[0]), int(dsize[1])
    if out_w <= 0 or out_h <= 0:
        raise ValueError(f"resize target (width, height) must be positive; got {dsize} for an image of shape "
                         f"{img.shape}")
    in_h, in_w = img.shape[:2]
    area_shrink = out_w <= in_w and out_h <= in_h
    rows = _cv2_resize_matrix(in_h, out_h, interpolation, area_shrink)
    cols = _cv2_resize_matrix(in_w, out_w, interpolation, area_shrink)
    out = _apply_separable(img.astype(np.float64), rows, cols)
    if img.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(img.dtype if np.issubdtype(img.dtype, np.floating) else np.float32)


def gaussian_kernel1d(ksize: int, sigma: float = 0.0) -> np.ndarray:
    """The sampled Gaussian of ``cv2.getGaussianKernel``; sigma <= 0 means 0.3 * ((ksize - 1) / 2 - 1) + 0.8.

    OpenCV replaces kernels of size <= 9 by rounded tables; this exact form matches it from size 11
    up (BSRGAN's sharpening uses 51).
    """
    if ksize <= 0 or ksize % 2 == 0:
        raise ValueError(f"ksize must be a positive odd number; got {ksize}")
    if sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize) - (ksize - 1) / 2
    kernel = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return kernel / kernel.sum()


def gaussian_blur(img: np.ndarray, ksize: int, sigma: float = 0.0) -> np.ndarray:
    """``cv2.GaussianBlur(img, (ksize, ksize), sigma)`` with OpenCV's default reflect-101 border."""
    kernel = gaussian_kernel1d(ksize, sigma)
    out = ndimage.correlate1d(img, kernel, axis=0, mode="mirror")
    return ndimage.correlate1d(out, kernel, axis=1, mode="mirror")


def jpeg_compress(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode a uint8 RGB (or grey) image as JPEG with ``quality`` (1..100) and decode it again.

    The same libjpeg quality scaling and 4:2:0 chroma subsampling that ``cv2.imencode`` uses.
    """
    if img.dtype != np.uint8:
        raise TypeError(f"jpeg_compress expects a uint8 image; got {img.dtype}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100; got {quality}")
    mode = "L" if img.ndim == 2 else "RGB"
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).convert(mode).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert(mode))
