"""The CPU fast paths of the U-Net, each with its measured reason and its plain fallback, behind one switch.

Every path computes what ``F.linear`` / ``F.conv2d`` compute, as the same sums in another order (equal to
float32 rounding; the parity tests pass through them), and keeps the parameters and state-dict keys of the
``nn`` layer it replaces.

- ``dense`` (and the ``Linear`` layer built on it): at float32 inference on the CPU the matrix product runs in
  oneDNN's matmul, ``torch.ops.mkldnn._linear_pointwise``, a PyTorch-internal op (the one Inductor lowers linear
  layers to). At one thread it is 5-35% faster than the BLAS ``addmm`` behind ``F.linear`` on the U-Net's shapes
  (100-108 against 73-96 GFLOP/s). Fallback, ``F.linear``: with gradients (the op has no backward), under
  autocast or ``torch.compile`` (Inductor packs the weights itself), on other dtypes and devices, and where
  the op is missing or fails its self-test.
- ``Conv2d``, a convolution run as one GEMM over gathered patches (``conv2d_as_gemm``): oneDNN's direct kernels
  run 3x3 convolutions of 1024 or more channels on the 4x4 and 8x8 maps of the text-to-image U-Net (batch 2)
  at 20 and 57 GFLOP/s at one thread, against about 110 for the same arithmetic as one matrix product (3.0x
  and 1.6x faster, forward and backward). Only weights of ``GEMM_CONV_MIN_WEIGHT`` elements or more on
  ``GEMM_CONV_MAX_POSITIONS`` output positions or fewer take it. Fallback, ``nn.Conv2d``: smaller weights or
  larger maps (where oneDNN is as fast or faster), other dtypes and devices, autocast, and weights that are
  not channels-last.
- Channels-last weights and feature maps (``memory_format``, the one place that decides them; ``UNetModel``
  asks it when placing its weights and its input): faster oneDNN convolutions, free ``(B, H*W, C)`` token
  views in the attention blocks, and the layout in which ``conv2d_as_gemm`` uses a weight in place
  (``is_channels_last``). Fallback: the contiguous format.

The switch: ``LDM_FAST_PATHS=0`` in the environment turns all of them off (``1``, the default, on). It is
read at each call, as ``torch.backends`` flags are; the memory format of a model's weights follows it when
they are placed (construction, ``UNetModel.use_channels_last``, loading).

The self-test: on first use ``dense`` runs the internal op on small random tensors and compares it with
``F.linear``. If the op is missing, raises (a changed signature) or gives other numbers, one
``RuntimeWarning`` names the op and the reason, and ``dense`` is ``F.linear`` from then on.
"""
from __future__ import annotations

import functools
import os
import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

#: The environment variable that turns every fast path off ("0") or on ("1", the default).
SWITCH = "LDM_FAST_PATHS"
SWITCH_VALUES = ("0", "1")
#: The internal op behind ``dense``, as PyTorch names it.
ONEDNN_LINEAR = "torch.ops.mkldnn._linear_pointwise"
#: Tolerance of the self-test against ``F.linear`` (float32 sums of 8 products in another order).
SELF_TEST_RTOL = 1e-5
SELF_TEST_ATOL = 1e-5
#: Largest number of output positions (batch x height x width) of a convolution run as one matrix product.
GEMM_CONV_MAX_POSITIONS = 256
#: Smallest weight (elements) of a convolution run as one matrix product.
GEMM_CONV_MIN_WEIGHT = 2 ** 23


def enabled() -> bool:
    """Whether the fast paths are on: ``$LDM_FAST_PATHS`` is unset or ``1``; ``0`` turns them off."""
    value = os.environ.get(SWITCH, "1")
    if value not in SWITCH_VALUES:
        raise ValueError(f"{SWITCH} must be one of {', '.join(SWITCH_VALUES)}; got {value!r}")
    return value == "1"


def memory_format(channels_last: bool) -> torch.memory_format:
    """The memory format of 2-D feature maps and convolution weights: channels-last where asked and on."""
    return torch.channels_last if channels_last and enabled() else torch.contiguous_format


def is_channels_last(weight: torch.Tensor) -> bool:
    """Whether a ``(C_out, C_in, kh, kw)`` weight lies in memory as ``(C_out, kh, kw, C_in)``."""
    return weight.permute(0, 2, 3, 1).is_contiguous()


def _lookup_onednn_linear() -> Callable[..., torch.Tensor] | None:
    """The internal op, or None where this torch build has no oneDNN or no such op."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def _call_onednn_linear(op: Callable[..., torch.Tensor], x: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None) -> torch.Tensor:
    """``op`` with the signature ``dense`` relies on: no fused activation ("none", no scalars, no algorithm)."""
    return op(x, weight, bias, "none", [], "")


def _self_test_failure(op: Callable[..., torch.Tensor]) -> str | None:
    """Why ``op`` cannot stand in for ``F.linear`` on small random tensors; None if it can.

    The two uses of ``dense`` are tried: tokens ``(B, T, C)`` with a bias and patch rows ``(N, C)`` without.
    """
    generator = torch.Generator().manual_seed(0)  # its own generator: the global random state stays as it was
    tokens = torch.randn(2, 3, 8, generator=generator)
    weight = torch.randn(5, 8, generator=generator)
    bias = torch.randn(5, generator=generator)
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for x, b in ((tokens, bias), (tokens[1], None)):
            try:
                out = _call_onednn_linear(op, x, weight, b)
            except Exception as err:  # noqa: BLE001 - any error (a changed signature above all) means the plain path
                return f"raised {type(err).__name__}: {err}"
            ref = F.linear(x, weight, b)
            if not isinstance(out, torch.Tensor) or out.shape != ref.shape:
                return f"returned {getattr(out, 'shape', type(out).__name__)} where F.linear gives {tuple(ref.shape)}"
            if not torch.allclose(out, ref, rtol=SELF_TEST_RTOL, atol=SELF_TEST_ATOL):
                return f"differs from F.linear by up to {(out - ref).abs().max().item():.3g}"
    return None


@functools.cache
def onednn_linear() -> Callable[..., torch.Tensor] | None:
    """The internal op once it has passed its self-test; None, after one warning, where it is missing or failed."""
    op = _lookup_onednn_linear()
    failure = "is missing from this torch build" if op is None else _self_test_failure(op)
    if failure is None:
        return op
    warnings.warn(f"{ONEDNN_LINEAR} {failure}; linear layers use F.linear from now on "
                  f"(set {SWITCH}=0 to turn the fast paths off)", RuntimeWarning, stacklevel=2)
    return None


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Float32 inference on the CPU outside autocast and ``torch.compile``, with the fast paths on."""
    return (not torch.compiler.is_compiling() and enabled() and x.device.type == "cpu"
            and torch.backends.mkldnn.enabled
            and x.dtype == weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))))


def dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: ``x @ weight.T + bias`` over the last dimension of ``x``.

    Where ``_onednn_applies``, in oneDNN's matmul (see the module docstring); otherwise ``F.linear``.
    """
    if _onednn_applies(x, weight, bias):
        op = onednn_linear()
        if op is not None:
            return _call_onednn_linear(op, x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) whose product is ``dense``'s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dense(x, self.weight, self.bias)


def conv2d_as_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                   padding: tuple[int, int]) -> torch.Tensor:
    """A 2-D convolution (zero padding, no dilation, one group) as one matrix product over gathered patches.

    The patches of the ``(B, C_in, H, W)`` input are gathered as rows of ``(B * H' * W', kh * kw * C_in)``
    in (ky, kx, channel) order, which is the memory order of a channels-last weight, so the weight enters the
    product as the free view ``(C_out, kh * kw * C_in)``. Returns ``(B, C_out, H', W')`` in the channels-last
    memory format. The same sums as ``F.conv2d`` in another order: equal to float32 rounding.
    """
    b, c, _, _ = x.shape
    c_out, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    x = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))  # (B, H + 2 ph, W + 2 pw, C_in)
    patches = x.unfold(1, kh, sh).unfold(2, kw, sw)  # (B, H', W', C_in, kh, kw), a view
    h_out, w_out = patches.shape[1:3]
    rows = patches.permute(0, 1, 2, 4, 5, 3).reshape(b * h_out * w_out, kh * kw * c)  # (B H' W', kh kw C_in)
    w = weight.permute(0, 2, 3, 1).reshape(c_out, kh * kw * c)  # (C_out, kh kw C_in), a view when channels-last
    out = dense(rows, w, bias)  # (B H' W', C_out)
    return out.view(b, h_out, w_out, c_out).permute(0, 3, 1, 2)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) that runs large-weight, small-map cases as a GEMM.

    Float32 only, outside autocast, with a channels-last weight (so that it is used in place), at most
    ``GEMM_CONV_MAX_POSITIONS`` output positions and at least ``GEMM_CONV_MIN_WEIGHT`` weight elements, with the
    fast paths on; otherwise, and on other devices, this is ``nn.Conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._as_gemm(x):
            return conv2d_as_gemm(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)

    def _as_gemm(self, x: torch.Tensor) -> bool:
        w = self.weight
        if not (x.device.type == "cpu" and x.ndim == 4 and x.dtype == w.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu") and w.numel() >= GEMM_CONV_MIN_WEIGHT
                and self.groups == 1 and self.dilation == (1, 1) and self.padding_mode == "zeros"
                and not isinstance(self.padding, str) and is_channels_last(w) and enabled()):
            return False
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        h_out = (x.shape[2] + 2 * ph - kh) // sh + 1
        w_out = (x.shape[3] + 2 * pw - kw) // sw + 1
        return x.shape[0] * h_out * w_out <= GEMM_CONV_MAX_POSITIONS
