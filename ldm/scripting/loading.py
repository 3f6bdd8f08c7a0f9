"""Model loading for the command-line tools: the device, the seed, a model built from config +
checkpoint with every state-dict key matched, and its EMA weights.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Mapping
from typing import Iterator

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


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices): the same seed gives the same images."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_model(config: DictConfig, ckpt: str | os.PathLike, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Build ``config.model``, load ``ckpt`` with every key matched, move it to ``device``, eval mode.

    Returns the model and the checkpoint's metadata (``global_step``, ``epoch`` when stored).
    """
    from ldm.checkpoint import check_weights_fit, load_checkpoint

    ckpt = require_file(ckpt, "checkpoint")
    model = instantiate_from_config(strip_ckpt_paths(config.model))
    obj = load_checkpoint(ckpt, map_location="cpu")
    state_dict = obj["state_dict"] if isinstance(obj, Mapping) and "state_dict" in obj else obj
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"checkpoint {ckpt} holds a {type(state_dict).__name__}, not a state dict")
    check_weights_fit(model, state_dict, ckpt)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {ckpt} does not fit the model of the config ({config.model.get('target')}): "
            f"{len(missing)} missing keys {list(missing)[:8]}, {len(unexpected)} unexpected keys "
            f"{list(unexpected)[:8]}; is it the checkpoint of this config?")
    model = model.to(device).eval()
    meta = {k: obj[k] for k in ("global_step", "epoch") if isinstance(obj, Mapping) and k in obj}
    logger.info("loaded %s (%s) onto %s", ckpt, config.model.get("target"), device)
    return model, meta


@contextlib.contextmanager
def ema_weights(model: torch.nn.Module) -> Iterator[None]:
    """The model's EMA weights inside the block, where it keeps them (``ema_scope``)."""
    scope = getattr(model, "ema_scope", None)
    with (scope() if scope is not None else contextlib.nullcontext()):
        yield
