"""Patch-wise processing of large inputs: overlapping crops, processed one by one, blended back.

Used by latent diffusion (Rombach et al., CVPR 2022, sec. 4.3.2 and appendix) to run the first
stage and the denoiser on images larger than those seen in training, e.g. for super-resolution at
1024^2. Crops come from `torch.nn.Unfold`; outputs are re-assembled with `torch.nn.Fold` and blended
with weights that fall off towards each crop's border ("tie breaker" weights also favour crops near
the image centre). The behaviour is switched on by setting ``model.split_input_params`` to a dict, which the
functions here take as ``params``:

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


def split_param(params: dict[str, Any] | None, name: str) -> Any:
    """``params[name]``; a ValueError naming the missing key otherwise."""
    if params is None or name not in params:
        present = sorted(params) if params is not None else None
        raise ValueError(f"split_input_params needs the key {name!r} for patch-wise processing; got keys {present}")
    return params[name]


def meshgrid(h: int, w: int) -> torch.Tensor:
    """(h, w, 2) grid of integer (y, x) coordinates."""
    y = torch.arange(0, h).view(h, 1, 1).repeat(1, w, 1)
    x = torch.arange(0, w).view(1, w, 1).repeat(h, 1, 1)
    return torch.cat([y, x], dim=-1)


def delta_border(h: int, w: int) -> torch.Tensor:
    """(h, w) normalised distance to the nearest border: 0 at the border, 0.5 at the centre.

    A length-1 axis is all border (the original divided by zero there).
    """
    lower_right_corner = torch.tensor([max(h - 1, 1), max(w - 1, 1)]).view(1, 1, 2)
    arr = meshgrid(h, w) / lower_right_corner
    dist_left_up = torch.min(arr, dim=-1, keepdim=True)[0]
    dist_right_down = torch.min(1 - arr, dim=-1, keepdim=True)[0]
    return torch.min(torch.cat([dist_left_up, dist_right_down], dim=-1), dim=-1)[0]


def get_weighting(params: dict[str, Any], h: int, w: int, Ly: int, Lx: int, device: torch.device) -> torch.Tensor:
    """(1, h * w, Ly * Lx) blending weights of every pixel of every crop."""
    weighting = delta_border(h, w)
    weighting = torch.clip(weighting, split_param(params, "clip_min_weight"), split_param(params, "clip_max_weight"))
    weighting = weighting.view(1, h * w, 1).repeat(1, 1, Ly * Lx).to(device)
    if split_param(params, "tie_braker"):
        L_weighting = delta_border(Ly, Lx)
        L_weighting = torch.clip(L_weighting, split_param(params, "clip_min_tie_weight"),
                                 split_param(params, "clip_max_tie_weight"))
        weighting = weighting * L_weighting.view(1, 1, Ly * Lx).to(device)
    return weighting


def get_fold_unfold(params: dict[str, Any], x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
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
    weighting = get_weighting(params, out_ks[0], out_ks[1], Ly, Lx, x.device).to(x.dtype)
    normalization = fold(weighting).view(1, 1, *out_size)  # how often each output pixel is covered
    weighting = weighting.view((1, 1, out_ks[0], out_ks[1], Ly * Lx))
    return fold, unfold, normalization, weighting


def fit_kernel(ks: tuple[int, int], stride: tuple[int, int], h: int, w: int):
    """Shrink crop size and stride that exceed the (h, w) input."""
    if ks[0] > h or ks[1] > w:
        ks = (min(ks[0], h), min(ks[1], w))
        logger.info("reducing Kernel")
    if stride[0] > h or stride[1] > w:
        stride = (min(stride[0], h), min(stride[1], w))
        logger.info("reducing stride")
    return ks, stride


def num_crops(h: int, w: int, ks: tuple[int, int], stride: tuple[int, int]) -> int:
    return ((h - ks[0]) // stride[0] + 1) * ((w - ks[1]) // stride[1] + 1)


def crops(unfold: torch.nn.Unfold, x: torch.Tensor, ks: tuple[int, int]) -> torch.Tensor:
    """(B, C, kh, kw, L) crops of ``x``."""
    out = unfold(x)  # (B, C * kh * kw, L)
    return out.view((out.shape[0], -1, ks[0], ks[1], out.shape[-1]))


def patchwise(params: dict[str, Any], x: torch.Tensor, ks: tuple[int, int], stride: tuple[int, int],
              fn: Callable[[int, torch.Tensor], torch.Tensor], uf: int = 1, df: int = 1) -> torch.Tensor:
    """Apply ``fn(i, crop_i)`` to every crop of ``x`` and blend the outputs into one tensor."""
    fold, unfold, normalization, weighting = get_fold_unfold(params, x, ks, stride, uf=uf, df=df)
    x_crops = crops(unfold, x, ks)
    o = torch.stack([fn(i, x_crops[:, :, :, :, i]) for i in range(x_crops.shape[-1])], dim=-1)  # (B, C', kh', kw', L)
    o = o * weighting
    o = o.view((o.shape[0], -1, o.shape[-1]))  # (B, C' * kh' * kw', L)
    return fold(o) / normalization


def patchwise_fitted(params: dict[str, Any], x: torch.Tensor, fn: Callable[[int, torch.Tensor], torch.Tensor],
                     uf: int = 1, df: int = 1) -> torch.Tensor:
    """`patchwise` with the crop size and stride of ``params``, shrunk to fit ``x`` (the first stage's crops)."""
    ks, stride = fit_kernel(split_param(params, "ks"), split_param(params, "stride"), *x.shape[-2:])
    return patchwise(params, x, ks, stride, fn, uf=uf, df=df)


def bbox_patch_conditioning(params: dict[str, Any], cond: dict, ks, stride, w: int, n_crops: int,
                            bbox_tokenizer: Any, rescale_latent: int, device: torch.device) -> list[torch.Tensor]:
    """The bounding-box tokens of each crop's position (layout-to-image), before encoding: (L, B, N) rows of
    the full image's tokens with the crop's own two position tokens in place of the last two."""
    if "original_image_size" not in params:
        raise ValueError("patch-wise bounding-box conditioning needs split_input_params['original_image_size'] "
                         "(set by encode_first_stage)")
    if bbox_tokenizer is None:
        raise ValueError("patch-wise bounding-box conditioning needs model.bbox_tokenizer; got None")
    if "c_crossattn" not in cond:
        raise ValueError(f"bounding-box conditioning must be given as c_crossattn; got keys {sorted(cond)}")
    n_patches_per_row = int((w - ks[0]) / stride[0] + 1)
    full_img_h, full_img_w = params["original_image_size"]
    # top-left corner, width and height of each crop, in (0, 1) image coordinates
    tl_patch_coordinates = [(rescale_latent * stride[0] * (patch_nr % n_patches_per_row) / full_img_w,
                             rescale_latent * stride[1] * (patch_nr // n_patches_per_row) / full_img_h)
                            for patch_nr in range(n_crops)]
    patch_limits = [(x_tl, y_tl, rescale_latent * ks[0] / full_img_w, rescale_latent * ks[1] / full_img_h)
                    for x_tl, y_tl in tl_patch_coordinates]
    patch_limits_tknzd = [torch.LongTensor(bbox_tokenizer._crop_encoder(bbox))[None].to(device)
                          for bbox in patch_limits]  # each (1, 2)
    cut_cond = cond["c_crossattn"][0][..., :-2].to(device)  # drop the full-image crop tokens
    return torch.stack([torch.cat([cut_cond, p], dim=1) for p in patch_limits_tknzd])
