"""Images of every PIL mode and bit depth, and .npy arrays of any integer or float range, load as the
right uint8 RGB pixels, or are refused with the file and the reason."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ldm.data.base import ImageReadError, load_image_array

H, W = 4, 8
#: A horizontal ramp 0..255 (8-bit truth for every test image).
RAMP8 = np.tile(np.linspace(0, 255, W).round().astype(np.uint8), (H, 1))


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _close(a: np.ndarray, b: np.ndarray, tol: int = 1) -> bool:
    return a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= tol


@pytest.mark.parametrize("mode", ["L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "I", "F", "1"])
def test_pil_modes_load_as_rgb(tmp_path, mode):
    gray = Image.fromarray(RAMP8, mode="L")
    img = gray.convert(mode)
    suffix = {"CMYK": ".tif", "I": ".tif", "F": ".tif"}.get(mode, ".png")
    if mode in ("YCbCr",):
        suffix = ".jpg"
    path = tmp_path / f"img_{mode}{suffix}"
    img.save(path)
    out = load_image_array(path)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    if mode == "1":  # dithered to black and white
        assert set(np.unique(out)) <= {0, 255}
    else:
        assert _close(out, _rgb(RAMP8), tol=3 if mode == "YCbCr" else 1), (mode, out[0, :, 0])


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_keep_their_range(tmp_path, suffix):
    ramp16 = np.tile(np.linspace(0, 65535, W).round().astype(np.uint16), (H, 1))
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(ramp16).save(path)
    assert Image.open(path).mode.startswith("I")
    out = load_image_array(path)
    assert _close(out, _rgb(RAMP8)), out[0, :, 0]  # not clipped to white
    assert (out == 255).mean() < 0.2


def test_lab_images_convert_to_rgb(tmp_path):
    path = tmp_path / "lab.tif"
    Image.fromarray(_rgb(RAMP8)).convert("LAB").save(path)
    assert Image.open(path).mode == "LAB"
    assert _close(load_image_array(path), _rgb(RAMP8), tol=2)


def _npy(tmp_path, arr, name="a.npy"):
    path = tmp_path / name
    np.save(path, arr)
    return path


@pytest.mark.parametrize("name,make", [
    ("uint8", lambda: RAMP8),
    ("uint16 full range", lambda: RAMP8.astype(np.uint16) * 257),
    ("int16 in 0..255", lambda: RAMP8.astype(np.int16)),
    ("int64 in 0..255", lambda: RAMP8.astype(np.int64)),
    ("float32 in [0, 1]", lambda: RAMP8.astype(np.float32) / 255),
    ("float64 in [-1, 1]", lambda: RAMP8.astype(np.float64) / 127.5 - 1),
    ("float32 in [0, 255]", lambda: RAMP8.astype(np.float32)),
    ("float16 in [0, 1]", lambda: (RAMP8.astype(np.float32) / 255).astype(np.float16)),
])
@pytest.mark.parametrize("layout", ["HWC", "CHW", "1CHW", "HW"])
def test_npy_arrays_of_any_numeric_range(tmp_path, name, make, layout):
    gray = make()
    arr = {"HWC": lambda a: _rgb(a), "CHW": lambda a: _rgb(a).transpose(2, 0, 1),
           "1CHW": lambda a: _rgb(a).transpose(2, 0, 1)[None], "HW": lambda a: a}[layout](gray)
    out = load_image_array(_npy(tmp_path, arr))
    assert out.dtype == np.uint8 and _close(out, _rgb(RAMP8), tol=1 if name != "float16 in [0, 1]" else 2), out[0, :, 0]


def test_npy_bool_is_black_and_white(tmp_path):
    out = load_image_array(_npy(tmp_path, RAMP8 > 127))
    assert set(np.unique(out)) == {0, 255}


@pytest.mark.parametrize("arr,match", [
    (np.full((H, W, 3), 70000, np.int32), r"int32 values in \[70000, 70000\] fit neither 0..255"),
    (np.full((H, W, 3), -3, np.int16), r"int16 values in \[-3, -3\]"),
    (np.full((H, W, 3), 300.0, np.float32), r"float32 values in \[300, 300\] are in none of the ranges"),
    (np.full((H, W, 3), -2.0), r"values in \[-2, -2\]"),
    (np.array([[[np.nan, 0, 0]]], np.float32), "NaN or infinite"),
    (np.zeros((H, W, 3), np.complex64), "pixels of type complex64 are not numbers"),
    (np.zeros((H, W, 4), np.uint8), r"expected an array of shape .*; got \(4, 8, 4\)"),
])
def test_npy_arrays_out_of_range_are_refused_by_name(tmp_path, arr, match):
    path = _npy(tmp_path, arr, "bad.npy")
    with pytest.raises(ImageReadError, match=match) as info:
        load_image_array(path)
    assert "bad.npy" in str(info.value)
