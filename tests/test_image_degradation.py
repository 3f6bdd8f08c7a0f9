"""The BSR degradation (Zhang et al., ICCV 2021) and its numpy/scipy/PIL replacements for OpenCV."""
from __future__ import annotations

import random
import time

import numpy as np
import pytest

from ldm.modules.image_degradation import bsrgan, bsrgan_light, degradation_fn_bsr, degradation_fn_bsr_light
from ldm.modules.image_degradation import utils_image as util

VARIANTS = {"full": degradation_fn_bsr, "light": degradation_fn_bsr_light}


def test_image(h: int = 64, w: int = 64) -> np.ndarray:
    """A smooth colour image with some edges: gradients plus a bright square."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x / w, y / h, 0.5 + 0.25 * np.sin(x / 5.0)], axis=-1)
    img[h // 4: h // 2, w // 4: w // 2] = 0.9
    return util.single2uint(img)


test_image.__test__ = False  # a helper, not a test


def seeded(seed: int, fn, *args, **kwargs):
    random.seed(seed)
    np.random.seed(seed)
    return fn(*args, **kwargs)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("sf", [2, 4])
def test_output_size_dtype_and_content(variant, sf):
    img = test_image()
    reference = util.resize(util.uint2single(img), (64 // sf, 64 // sf), interpolation=util.INTER_AREA)
    for seed in range(12):  # enough seeds to visit the random branches (halving, resize kinds, noise kinds)
        out = seeded(seed, VARIANTS[variant], image=img, sf=sf)["image"]
        assert out.shape == (64 // sf, 64 // sf, 3) and out.dtype == np.uint8
        # still the same picture, in place: correlated with a clean downsampling (its mirror image is not)
        assert np.corrcoef(util.uint2single(out).ravel(), reference.ravel())[0, 1] > 0.6
    assert np.corrcoef(reference[::-1].ravel(), reference.ravel())[0, 1] < 0.2


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_same_seed_same_output_different_seed_different_output(variant):
    img = test_image()
    a = seeded(3, VARIANTS[variant], img, sf=4)["image"]
    b = seeded(3, VARIANTS[variant], img, sf=4)["image"]
    np.testing.assert_array_equal(a, b)
    others = [seeded(s, VARIANTS[variant], img, sf=4)["image"] for s in (4, 5, 6)]
    assert all(not np.array_equal(a, o) for o in others)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_on_a_small_image(variant):
    img = test_image()
    start = time.perf_counter()
    seeded(0, VARIANTS[variant], img, sf=4)
    assert time.perf_counter() - start < 2.0


def test_non_square_images_keep_their_aspect():
    out = seeded(1, degradation_fn_bsr, test_image(64, 48), sf=4)["image"]
    assert out.shape == (16, 12, 3)
    up = seeded(1, degradation_fn_bsr_light, test_image(64, 48), sf=4, up=True)["image"]
    assert up.shape == (64, 48, 3) and up.dtype == np.uint8


def test_patch_pipelines():
    img = util.uint2single(test_image())
    lq, hq = seeded(0, bsrgan.degradation_bsrgan, img, sf=4, lq_patchsize=8)
    assert lq.shape == (8, 8, 3) and hq.shape == (32, 32, 3)
    for seed in range(3):
        lq, hq = seeded(seed, bsrgan.degradation_bsrgan_plus, img, sf=4, lq_patchsize=8)
        assert lq.shape == (8, 8, 3) and hq.shape == (32, 32, 3)
        assert 0.0 <= lq.min() and lq.max() <= 1.0
    with pytest.raises(ValueError, match="too small"):
        bsrgan.degradation_bsrgan(img, sf=4, lq_patchsize=72)


def test_kernels():
    k = bsrgan.anisotropic_Gaussian(ksize=15, theta=0.3, l1=4.0, l2=1.0)
    assert k.shape == (15, 15) and abs(k.sum() - 1) < 1e-9
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-12)  # point symmetric about the centre
    assert k[7, 7] == k.max()
    g = bsrgan.fspecial("gaussian", 7, 1.5)
    assert abs(g.sum() - 1) < 1e-9 and np.allclose(g, g.T)
    with pytest.raises(ValueError, match="gaussian"):
        bsrgan.fspecial("motion", 3)
    # shifting by (sf - 1) / 2 moves the peak of a centred kernel up-left, by one pixel for sf = 3
    shifted = bsrgan.shift_pixel(g, 3)
    assert np.unravel_index(np.argmax(shifted), shifted.shape) == (2, 2)


def test_noise_and_blur_steps_stay_in_range():
    img = util.uint2single(test_image())
    for seed in range(6):
        for step in (bsrgan.add_blur, bsrgan_light.add_blur, bsrgan.add_Gaussian_noise, bsrgan.add_speckle_noise,
                     bsrgan.add_Poisson_noise, bsrgan.add_JPEG_noise, bsrgan_light.add_JPEG_noise):
            out = seeded(seed, step, img)
            assert out.shape == img.shape and out.dtype == np.float32
            assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
        resized = seeded(seed, bsrgan.add_resize, img, sf=4)
        assert 8 <= resized.shape[0] <= 128 and resized.dtype == np.float32
    sharp = bsrgan.add_sharpening(img)
    assert sharp.shape == img.shape and np.abs(sharp - img).max() > 0


def test_conversions_round_trip():
    img = test_image()
    np.testing.assert_array_equal(util.single2uint(util.uint2single(img)), img)
    np.testing.assert_array_equal(util.tensor2uint(util.uint2tensor4(img)), img)
    assert util.uint2tensor3(img).shape == (3, 64, 64)
    assert util.calculate_psnr(img, img) == float("inf")
    assert util.modcrop(img[:63, :62], 4).shape == (60, 60, 3)
    assert {util.augment_img(img, m).tobytes() for m in range(8)}.__len__() == 8  # 8 distinct transforms


def test_cv2_compatible_resize():
    """Pinned against OpenCV 4.14 (cv2.resize on float32 agrees to 5e-6 on random sizes)."""
    row = np.array([[0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(util.resize(row, (4, 1), util.INTER_LINEAR)[0], [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(util.resize(row, (4, 1), util.INTER_AREA)[0], [0, 0, 1, 1])
    np.testing.assert_allclose(util.resize(row, (4, 1), util.INTER_NEAREST)[0], [0, 0, 1, 1])
    img = np.random.default_rng(0).random((8, 6, 3)).astype(np.float32)
    area = util.resize(img, (3, 4), util.INTER_AREA)
    np.testing.assert_allclose(area, img.reshape(4, 2, 3, 2, 3).mean(axis=(1, 3)), rtol=1e-6)
    const = np.full((5, 7, 3), 0.3, dtype=np.float32)
    for interp in (util.INTER_LINEAR, util.INTER_CUBIC, util.INTER_AREA):
        for size in [(3, 2), (11, 13)]:
            out = util.resize(const, size, interp)
            assert out.shape == (size[1], size[0], 3) and out.dtype == np.float32
            np.testing.assert_allclose(out, 0.3, rtol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        util.resize(img, (0, 3))


def test_matlab_imresize():
    img = util.uint2single(test_image())
    half = util.imresize_np(img, 1 / 2)
    assert half.shape == (32, 32, 3) and half.dtype == np.float32
    const = np.full((9, 10, 3), 0.7, dtype=np.float32)
    np.testing.assert_allclose(util.imresize_np(const, 1 / 3), 0.7, rtol=1e-6)
    np.testing.assert_allclose(util.imresize_np(const, 2.0), 0.7, rtol=1e-6)
    assert util.imresize_np(const, 1 / 3).shape == (3, 4, 3)


def test_jpeg_round_trip():
    img = test_image()
    low, high = util.jpeg_compress(img, 30), util.jpeg_compress(img, 95)
    assert low.shape == img.shape and low.dtype == np.uint8
    err_low = np.abs(low.astype(int) - img).mean()
    err_high = np.abs(high.astype(int) - img).mean()
    assert err_high < err_low < 10
    with pytest.raises(TypeError, match="uint8"):
        util.jpeg_compress(util.uint2single(img), 50)
