"""``ldm.pixels.to_uint8``, the one conversion to 8-bit pixels: truncating as the original sampling scripts
saved their images, rounding as the exact inverse of the datasets' ``to_float``, for tensors and arrays."""
from __future__ import annotations

import numpy as np
import torch

from ldm.data.base import to_float
from ldm.pixels import to_uint8


def values() -> torch.Tensor:
    """Values in and around [-1, 1], with the levels' exact edges and the 256 values of ``to_float``."""
    g = torch.Generator().manual_seed(0)
    levels = torch.from_numpy(to_float(np.arange(256, dtype=np.uint8)))
    return torch.cat([torch.rand(20000, generator=g) * 2.4 - 1.2, torch.linspace(-1, 1, 511), levels,
                      torch.tensor([-1.0, 0.0, 1.0, -0.0])])


def test_truncates_as_the_original_scripts_saved_samples():
    x = values().view(1, 1, 1, -1)
    # the original's custom_to_pil (PNGs) and custom_to_np (.npz) of scripts/sample_diffusion.py
    pil = (255 * ((torch.clamp(x[0], -1.0, 1.0) + 1.0) / 2.0).permute(1, 2, 0).numpy()).astype(np.uint8)
    npz = ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = to_uint8(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    np.testing.assert_array_equal(out.permute(0, 2, 3, 1).numpy(), npz)
    np.testing.assert_array_equal(out[0].permute(1, 2, 0).numpy(), pil)
    # the txt2img scripts: images in [0, 1], 255 * x truncated
    unit = torch.clamp((x + 1.0) / 2.0, min=0.0, max=1.0)
    np.testing.assert_array_equal(to_uint8(unit, low=0.0).numpy(), (255.0 * unit.numpy()).astype(np.uint8))


def test_nearest_is_the_inverse_of_to_float_and_keeps_arrays_numpy():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    out = to_uint8(to_float(levels), nearest=True)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, levels)
    x = values().double().numpy()
    np.testing.assert_array_equal(to_uint8(x, nearest=True), np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(to_uint8(x[::-1]), to_uint8(x)[::-1])  # a view with a negative stride


def test_low_precision_is_converted_in_float32():
    x = torch.tensor([-1.0, -0.5, 0.3, 1.0])
    np.testing.assert_array_equal(to_uint8(x.bfloat16()).numpy(), to_uint8(x.bfloat16().float()).numpy())
