"""8-bit pixels from images in the model's range: the one conversion that every saved sample, every
dataset image turned back into pixels and every 8-bit measurement goes through.
"""
from __future__ import annotations

import numpy as np
import torch

#: Added before truncating, to round to the nearest level (halves up).
HALF_LEVEL = 0.5


def to_uint8(x: torch.Tensor | np.ndarray, low: float = -1.0, nearest: bool = False) -> torch.Tensor | np.ndarray:
    """Images with values in [``low``, 1] (-1: the model's range; 0: [0, 1]) as uint8 levels 0 .. 255, in the
    layout and type given (a torch tensor stays on its device; a numpy array stays numpy).

    ``255 * (x - low) / (1 - low)``, clipped to [0, 255], then truncated, as the original sampling scripts save
    their images (``255. * x`` and ``astype(np.uint8)``); with ``nearest``, rounded to the nearest level
    (halves up): the exact inverse of ``ldm.data.base.to_float``, and the level a measurement compares.
    Computed in float32 at least (float64 stays float64).
    """
    if isinstance(x, torch.Tensor):
        x = x.detach()
        x = x.to(torch.promote_types(x.dtype, torch.float32))
    else:
        x = np.asarray(x)
        x = x.astype(np.promote_types(x.dtype, np.float32), copy=False)
    levels = ((x - low) / (1.0 - low)).clip(0.0, 1.0) * 255.0 + (HALF_LEVEL if nearest else 0.0)
    return levels.to(torch.uint8) if isinstance(levels, torch.Tensor) else levels.astype(np.uint8)


def to_uint8_hwc(x: torch.Tensor, low: float = -1.0) -> np.ndarray:
    """Images (..., C, H, W) in [``low``, 1] as a (..., H, W, C) uint8 numpy array, channels last as images are
    saved (`to_uint8`, truncating)."""
    return to_uint8(x.cpu(), low).movedim(-3, -1).numpy()
