"""Model loading for the command-line tools: the device, the seed, a model built from config +
checkpoint with every state-dict key matched, and its EMA weights.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig

from ldm.scripting.inputs import require_file, strip_ckpt_paths
from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)



def choose_device(name: str | None = None) -> torch.device:
    """``name`` as a device; by default cuda when available, else cpu."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"--device must name a torch device such as cpu, cuda or cuda:1; got {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA, but torch.cuda.is_available() is False")
    return device


#: The autocast dtype of each ``--precision`` (None: float32, no autocast).
PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--precision`` on ``device`` (None for fp32); ValueError where it does not apply."""
    if precision == "autocast":
        precision = "fp16" if device.type == "cuda" else "bf16"
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"--precision must be one of fp32, bf16, fp16, autocast; got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"--precision fp16 needs a CUDA device; got --device {device} (use bf16 on the CPU)")
    return PRECISION_DTYPES[precision]


def precision_scope(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``--precision`` on ``device`` (the weights stay float32), or nothing for fp32."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices): the same seed gives the same images."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside the block get their parameters on the meta device: shapes only, no memory, no init.

    A parameter is created where its module creates it (an uninitialized ``torch.empty`` for the layers of
    ``torch.nn``) and moved to the meta device as it is registered, so the random initialization that runs
    after it costs nothing. Buffers stay real: schedules and other values computed from the config are kept.
    Fill the parameters with ``load_state_dict(state_dict, assign=True)``.
    """
    register = torch.nn.Module.register_parameter

    def register_on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def _as_model_dtypes(model: torch.nn.Module, state_dict: Mapping) -> dict:
    """``state_dict`` with floating tensors cast to the dtype of the model's tensors (a no-op when they agree)."""
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    out = {}
    for key, value in state_dict.items():
        target = own.get(key)
        if (isinstance(value, torch.Tensor) and target is not None and value.is_floating_point()
                and value.dtype != target.dtype):
            value = value.to(target.dtype)
        out[key] = value
    return out


def load_model(config: DictConfig, ckpt: str | os.PathLike, device: torch.device,
               empty_init: bool = True, compile_unet: bool = False) -> tuple[torch.nn.Module, dict]:
    """Build ``config.model``, load ``ckpt`` with every key matched, move it to ``device``, eval mode.

    With ``empty_init`` (the default) the model is built with its parameters on the meta device
    (`parameters_on_meta`) and the checkpoint's tensors, mapped from the file rather than read
    (`ldm.checkpoint.load_checkpoint` with ``mmap``), become its parameters (``assign=True``): no time on
    a random initialization that the checkpoint overwrites, no time copying the file into memory, and one
    copy of the weights, not two. Without it the model is built with its random initialization and the
    checkpoint, read into memory, is copied into it.
    With ``compile_unet`` its U-Net runs through ``torch.compile`` from its first call (`ldm.compile`).
    Returns the model and the checkpoint's metadata (``global_step``, ``epoch`` when stored).
    """
    from ldm.checkpoint import check_weights_fit, extract_state_dict, load_checkpoint

    ckpt = require_file(ckpt, "checkpoint")
    obj = load_checkpoint(ckpt, map_location="cpu", mmap=empty_init)
    state_dict = extract_state_dict(obj, ckpt)
    with (parameters_on_meta() if empty_init else contextlib.nullcontext()):
        model = instantiate_from_config(strip_ckpt_paths(config.model))
    check_weights_fit(model, state_dict, ckpt)
    if empty_init:
        state_dict = _as_model_dtypes(model, state_dict)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=empty_init)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {ckpt} does not fit the model of the config ({config.model.get('target')}): "
            f"{len(missing)} missing keys {list(missing)[:8]}, {len(unexpected)} unexpected keys "
            f"{list(unexpected)[:8]}; is it the checkpoint of this config?")
    del state_dict
    unfilled = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if unfilled:
        raise ValueError(f"checkpoint {ckpt} left {len(unfilled)} tensors of the model without values, such as "
                         f"{unfilled[:4]}; load it with empty_init=False")
    model = model.to(device).eval()
    if compile_unet:
        from ldm.compile import compile_unet as compile_model_unet

        compile_model_unet(model)
    meta = {k: obj[k] for k in ("global_step", "epoch") if isinstance(obj, Mapping) and k in obj}
    logger.info("loaded %s (%s) onto %s", ckpt, config.model.get("target"), device)
    return model, meta


@contextlib.contextmanager
def ema_weights(model: torch.nn.Module) -> Iterator[None]:
    """The model's EMA weights inside the block, where it keeps them (``ema_scope``).

    For a diffusion model (``DDPM`` and its subclasses) with ``use_ema`` the network's parameters are pointed at
    the EMA tensors for the block and back afterwards (`LitEma.pointed_to`), where ``ema_scope`` copies the
    weights aside and copies the EMA into them: the same values in the same memory format, without two copies
    of the network's weights (nor writes into weights mapped from the checkpoint file). The block must not
    change the weights in place (sampling does not): it would change the EMA tensors.
    """
    from ldm.models.diffusion.ddpm_module import DDPM

    if isinstance(model, DDPM) and model.use_ema:
        with model.model_ema.pointed_to(model.model):
            yield
        return
    scope = getattr(model, "ema_scope", None)
    with (scope() if scope is not None else contextlib.nullcontext()):
        yield


@contextlib.contextmanager
def sampling_scope(model: torch.nn.Module, precision: str, device: torch.device) -> Iterator[None]:
    """The block a script samples in: no gradients, the model's EMA weights (`ema_weights`) and the autocast
    of ``--precision`` on ``device`` (`precision_scope`)."""
    with torch.no_grad(), ema_weights(model), precision_scope(precision, device):
        yield


def load_sampling_model(config: DictConfig, ckpt: str | os.PathLike, device: torch.device, sampler_name: str,
                        compile_unet: bool = False) -> tuple[torch.nn.Module, Any]:
    """The model of ``config`` and ``ckpt`` on ``device`` (`load_model`) and the sampler ``sampler_name`` made
    for it (`ldm.models.diffusion.sampling.make_sampler`)."""
    from ldm.models.diffusion.sampling import make_sampler

    model, _ = load_model(config, ckpt, device, compile_unet=compile_unet)
    return model, make_sampler(sampler_name, model)
