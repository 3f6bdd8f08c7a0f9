"""Patch-wise processing of large inputs: overlapping crops, processed one by one, blended back.

Used by latent diffusion (Rombach et al., CVPR 2022, sec. 4.3.2 and appendix) to run the first
stage and the denoiser on images larger than those seen in training, e.g. for super-resolution at
1024^2. Crops come from `torch.nn.Unfold`; outputs are re-assembled with `torch.nn.Fold` and blended
with weights that fall off towards each crop's border ("tie breaker" weights also favour crops near
the image centre). The behaviour is switched on by setting ``model.split_input_params`` to a dict:

- ``ks``, ``stride``: crop size and stride, in the space being cropped;
- ``vqf``: down-sampling factor of the first stage (latent -> image is ``vqf`` times larger);
- ``patch_distributed_vq``: also encode / decode the first stage crop by crop;
- ``clip_min_weight``, ``clip_max_weight``: clamp range of the border-distance weights;
- ``tie_braker`` (sic, the original's key), ``clip_min_tie_weight``, ``clip_max_tie_weight``: the
  per-crop weighting and its clamp range.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

logger = logging.getLogger(__name__)


class PatchwiseMixin:
    """Fold / unfold helpers; expects ``self.split_input_params`` (a dict or None)."""

    split_input_params: dict[str, Any] | None = None

    def _split_param(self, name: str) -> Any:
        params = self.split_input_params
        if params is None or name not in params:
            present = sorted(params) if params is not None else None
            raise ValueError(f"split_input_params needs the key {name!r} for patch-wise processing; got keys {present}")
        return params[name]

    def meshgrid(self, h: int, w: int) -> torch.Tensor:
        """(h, w, 2) grid of integer (y, x) coordinates."""
        y = torch.arange(0, h).view(h, 1, 1).repeat(1, w, 1)
        x = torch.arange(0, w).view(1, w, 1).repeat(h, 1, 1)
        return torch.cat([y, x], dim=-1)

    def delta_border(self, h: int, w: int) -> torch.Tensor:
        """(h, w) normalised distance to the nearest border: 0 at the border, 0.5 at the centre.

        A length-1 axis is all border (the original divided by zero there).
        """
        lower_right_corner = torch.tensor([max(h - 1, 1), max(w - 1, 1)]).view(1, 1, 2)
        arr = self.meshgrid(h, w) / lower_right_corner
        dist_left_up = torch.min(arr, dim=-1, keepdim=True)[0]
        dist_right_down = torch.min(1 - arr, dim=-1, keepdim=True)[0]
        return torch.min(torch.cat([dist_left_up, dist_right_down], dim=-1), dim=-1)[0]

    def get_weighting(self, h: int, w: int, Ly: int, Lx: int, device: torch.device) -> torch.Tensor:
        """(1, h * w, Ly * Lx) blending weights of every pixel of every crop."""
        weighting = self.delta_border(h, w)
        weighting = torch.clip(weighting, self._split_param("clip_min_weight"), self._split_param("clip_max_weight"))
        weighting = weighting.view(1, h * w, 1).repeat(1, 1, Ly * Lx).to(device)
        if self._split_param("tie_braker"):
            L_weighting = self.delta_border(Ly, Lx)
            L_weighting = torch.clip(L_weighting, self._split_param("clip_min_tie_weight"),
                                     self._split_param("clip_max_tie_weight"))
            weighting = weighting * L_weighting.view(1, 1, Ly * Lx).to(device)
        return weighting

    def get_fold_unfold(self, x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
                        uf: int = 1, df: int = 1):
        """Unfold for crops of ``x``, and a fold for outputs ``uf`` times larger or ``df`` times smaller.

        Returns ``(fold, unfold, normalization, weighting)``: ``normalization`` (1, 1, H', W') is the
        folded sum of the weights, ``weighting`` (1, 1, kh', kw', L) multiplies the crop outputs.
        """
        if uf < 1 or df < 1 or (uf > 1 and df > 1):
            raise ValueError(f"get_fold_unfold scales the output up (uf > 1) or down (df > 1), not both; "
                             f"got uf={uf!r}, df={df!r}")
        _, _, h, w = x.shape
        Ly = (h - kernel_size[0]) // stride[0] + 1  # number of crops along each axis
        Lx = (w - kernel_size[1]) // stride[1] + 1
        if uf > 1:
            out_ks = (kernel_size[0] * uf, kernel_size[1] * uf)
            out_stride = (stride[0] * uf, stride[1] * uf)
            out_size = (h * uf, w * uf)
        elif df > 1:
            out_ks = (kernel_size[0] // df, kernel_size[1] // df)
            out_stride = (stride[0] // df, stride[1] // df)
            out_size = (h // df, w // df)
        else:
            out_ks, out_stride, out_size = tuple(kernel_size), tuple(stride), (h, w)

        unfold = torch.nn.Unfold(kernel_size=kernel_size, dilation=1, padding=0, stride=stride)
        fold = torch.nn.Fold(output_size=out_size, kernel_size=out_ks, dilation=1, padding=0, stride=out_stride)
        weighting = self.get_weighting(out_ks[0], out_ks[1], Ly, Lx, x.device).to(x.dtype)
        normalization = fold(weighting).view(1, 1, *out_size)  # how often each output pixel is covered
        weighting = weighting.view((1, 1, out_ks[0], out_ks[1], Ly * Lx))
        return fold, unfold, normalization, weighting

    @staticmethod
    def _fit_kernel(ks: tuple[int, int], stride: tuple[int, int], h: int, w: int):
        """Shrink crop size and stride that exceed the (h, w) input."""
        if ks[0] > h or ks[1] > w:
            ks = (min(ks[0], h), min(ks[1], w))
            logger.info("reducing Kernel")
        if stride[0] > h or stride[1] > w:
            stride = (min(stride[0], h), min(stride[1], w))
            logger.info("reducing stride")
        return ks, stride

    @staticmethod
    def _num_crops(h: int, w: int, ks: tuple[int, int], stride: tuple[int, int]) -> int:
        return ((h - ks[0]) // stride[0] + 1) * ((w - ks[1]) // stride[1] + 1)

    @staticmethod
    def _crops(unfold: torch.nn.Unfold, x: torch.Tensor, ks: tuple[int, int]) -> torch.Tensor:
        """(B, C, kh, kw, L) crops of ``x``."""
        crops = unfold(x)  # (B, C * kh * kw, L)
        return crops.view((crops.shape[0], -1, ks[0], ks[1], crops.shape[-1]))

    def _patchwise(self, x: torch.Tensor, ks: tuple[int, int], stride: tuple[int, int],
                   fn: Callable[[int, torch.Tensor], torch.Tensor], uf: int = 1, df: int = 1) -> torch.Tensor:
        """Apply ``fn(i, crop_i)`` to every crop of ``x`` and blend the outputs into one tensor."""
        fold, unfold, normalization, weighting = self.get_fold_unfold(x, ks, stride, uf=uf, df=df)
        crops = self._crops(unfold, x, ks)
        o = torch.stack([fn(i, crops[:, :, :, :, i]) for i in range(crops.shape[-1])], dim=-1)  # (B, C', kh', kw', L)
        o = o * weighting
        o = o.view((o.shape[0], -1, o.shape[-1]))  # (B, C' * kh' * kw', L)
        return fold(o) / normalization
