"""Inputs of the command-line tools in ``scripts/``: checking files before any model is built (with
the download script that fetches a missing model-zoo file), reading configs and prompt files, and the
latent geometry a config implies (Rombach et al., CVPR 2022: first-stage and UNet downsampling).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Parameters of a model config that point at separately downloaded weights; a full checkpoint holds them.
CKPT_PATH_KEYS = ("ckpt_path",)
#: Sub-configs of a LatentDiffusion whose own ``ckpt_path`` a full checkpoint makes redundant.
SUB_CONFIG_KEYS = ("first_stage_config", "cond_stage_config", "unet_config")
#: Channel multipliers of the UNet when its config gives none (UNetModel's default).
DEFAULT_UNET_CHANNEL_MULT = (1, 2, 4, 8)


def download_hint(path: str | os.PathLike) -> str:
    """How to get a model-zoo file at ``path``: the download script and model name for models/<kind>/<name>/."""
    parts = Path(path).parts
    if "models" in parts:
        rest = parts[len(parts) - parts[::-1].index("models"):]
        if len(rest) >= 3:
            kind, name = rest[0], rest[1]
            if kind in ("ldm", "rdm"):
                return f"Fetch it with `bash scripts/download_models.sh {name}`."
            if kind == "first_stage_models":
                return f"Fetch it with `bash scripts/download_first_stages.sh {name}`."
    return "Pass the right path, or train a model with `python main.py --base <config> -t`."


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path; FileNotFoundError naming it and how to get it when it is not a file."""
    p = Path(path)
    if not p.is_file():
        state = "is a directory, not a file" if p.is_dir() else "not found"
        raise FileNotFoundError(f"{what} {state}: {p}. {download_hint(p)}")
    return p


def load_config(path: str | os.PathLike) -> DictConfig:
    """The YAML config at ``path``; it must have a ``model`` section."""
    config = OmegaConf.load(require_file(path, "config"))
    if not isinstance(config, DictConfig) or "model" not in config:
        keys = list(config.keys()) if isinstance(config, DictConfig) else type(config).__name__
        raise ValueError(f"config {path} has no 'model' section; found {keys}")
    return config


def strip_ckpt_paths(model_config: DictConfig) -> DictConfig:
    """A copy of ``model_config`` without ``ckpt_path`` entries (model and sub-configs).

    A full checkpoint holds the first stage and the conditioning encoder too; the separate files
    that ``ckpt_path`` names need not exist when the whole model is loaded from one checkpoint.
    """
    config = OmegaConf.create(OmegaConf.to_container(model_config, resolve=True))
    params = config.get("params")
    if params is None:
        return config
    for key in CKPT_PATH_KEYS:
        params.pop(key, None)
    for sub in SUB_CONFIG_KEYS:
        sub_config = params.get(sub)
        if isinstance(sub_config, DictConfig) and sub_config.get("params") is not None:
            for key in CKPT_PATH_KEYS:
                sub_config.params.pop(key, None)
    return config


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a prompt file; FileNotFoundError / ValueError when missing or empty."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p} (--from-file expects a text file, one prompt per line)")
    prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {p} holds no prompt (one prompt per line expected)")
    return prompts


def _params(config: Any) -> Mapping:
    """``config.params`` of a {target, params} mapping, {} when absent."""
    params = config.get("params") if hasattr(config, "get") else None
    return params if params is not None else {}


def first_stage_factor(model_config: DictConfig) -> int:
    """Spatial downsampling of the first stage: 2 ** (len(ch_mult) - 1); 1 for pixel-space models."""
    first = _params(model_config).get("first_stage_config")
    if first is None or isinstance(first, str):
        return 1
    ddconfig = _params(first).get("ddconfig")
    if ddconfig is None:
        return 1  # IdentityFirstStage
    return 2 ** (len(ddconfig.get("ch_mult", (1,))) - 1)


def unet_factor(model_config: DictConfig) -> int:
    """Spatial downsampling inside the UNet: 2 ** (len(channel_mult) - 1)."""
    unet = _params(model_config).get("unet_config")
    mult = _params(unet).get("channel_mult", DEFAULT_UNET_CHANNEL_MULT) if unet is not None else (1,)
    return 2 ** (len(mult) - 1)


def latent_channels(model_config: DictConfig) -> int:
    """Channels of the diffused tensor (``params.channels``, default 3)."""
    return int(_params(model_config).get("channels", 3))


def latent_size(model_config: DictConfig, H: int, W: int, flag: str = "--H/--W") -> tuple[int, int]:
    """The latent (h, w) of an H x W image; ValueError when the model cannot produce that size."""
    f = first_stage_factor(model_config)
    multiple = f * unet_factor(model_config)
    for name, value in ((flag.split("/")[0], H), (flag.split("/")[-1], W)):
        if value <= 0 or value % multiple:
            raise ValueError(f"{name} {value} must be a positive multiple of {multiple} for this model "
                             f"(first-stage downsampling {f} x UNet downsampling {multiple // f})")
    return H // f, W // f
