"""The U-Net through ``torch.compile`` (TorchInductor; Ansel et al. 2024), as an option for sampling.

Inductor fuses the pointwise work between the convolutions and matrix products (GroupNorm with SiLU, bias
and residual adds, the GEGLU gate) into generated loops, and, with frozen weights, packs the convolution
and linear weights once for oneDNN instead of on every call. The convolutions and matrix products
themselves are the same library kernels, so the outputs agree with the eager model to float rounding.

Compilation takes a minute or more on a CPU and pays off over a sampling run of many steps. It is an
option (``--compile`` in the sampling scripts, ``+compile`` in ``benchmarks/run_all.py``) that degrades
cleanly: where compilation is unavailable (no C++ compiler for the CPU backend, no Triton for CUDA) or
fails, the model runs eagerly after one warning.

With ``freeze=True`` the weights are constants of the compiled graph: compile a model whose weights no
longer change (the sampling scripts compile inside ``ema_weights``, so the EMA weights are the ones used).
Frozen weights only apply under ``torch.no_grad()``; training graphs are compiled without them.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
from typing import Any, Callable

import torch

logger = logging.getLogger(__name__)


def unavailable_reason(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot build code for ``device`` here, or None when it can."""
    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "Triton is not installed"
    if device.type != "cpu":
        return f"the {device.type} device has no Inductor backend here"
    compilers = [os.environ.get("CXX"), "g++", "clang++"]
    if not any(c and shutil.which(c) for c in compilers):
        return "no C++ compiler (g++, clang++ or $CXX) was found for Inductor's CPU backend"
    return None


def compile_forward(module: torch.nn.Module, freeze: bool = True) -> bool:
    """Run ``module``'s forward through ``torch.compile`` from its next call on; True when set up.

    The module keeps its parameters and state-dict keys (only its ``forward`` attribute changes). When
    compilation is unavailable nothing changes and a warning says why; when the compiled call raises, the
    warning names the error and this and every later call run eagerly.
    """
    device = next(module.parameters()).device
    reason = unavailable_reason(device)
    if reason is not None:
        logger.warning("not compiling %s: %s; it runs eagerly", type(module).__name__, reason)
        return False
    eager: Callable[..., Any] = module.forward
    compiled = torch.compile(eager, options={"freezing": freeze})
    failed = False

    @functools.wraps(eager)
    def forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        if not failed:
            try:
                return compiled(*args, **kwargs)
            except Exception as err:  # a compiler or backend error; an error of the model itself recurs eagerly
                failed = True
                logger.warning("torch.compile of %s failed (%s: %s); running it eagerly", type(module).__name__,
                               type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return eager(*args, **kwargs)

    module.forward = forward
    logger.info("%s compiles with torch.compile on its first call (frozen weights: %s)", type(module).__name__,
                freeze)
    return True


def compile_unet(model: torch.nn.Module, freeze: bool = True) -> bool:
    """``compile_forward`` of the U-Net of a diffusion model (``model.model.diffusion_model``) or of a U-Net."""
    wrapper = getattr(model, "model", None)
    unet = getattr(wrapper, "diffusion_model", None) if wrapper is not None else None
    return compile_forward(unet if unet is not None else model, freeze=freeze)
