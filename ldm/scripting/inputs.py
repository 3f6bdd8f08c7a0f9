"""Inputs of the command-line tools in ``scripts/``: checking files before any model is built (with
the download script that fetches a missing model-zoo file), finding the checkpoint and config of a
``main.py`` run folder or a model-zoo folder, reading configs and prompt files, and the latent
geometry a config implies (Rombach et al., CVPR 2022: first-stage and UNet downsampling).

Nothing here imports torch, so that a script can check its arguments and its model's config at once.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ldm.checkpoint.hints import download_hint

#: Parameters of a model config that point at separately downloaded weights; a full checkpoint holds them.
CKPT_PATH_KEYS = ("ckpt_path",)
#: Sub-configs of a LatentDiffusion whose own ``ckpt_path`` a full checkpoint makes redundant.
SUB_CONFIG_KEYS = ("first_stage_config", "cond_stage_config", "unet_config")
#: The cond stage config of an unconditional LatentDiffusion (ldm.util.UNCONDITIONAL_SENTINEL, which
#: cannot be imported here without torch).
UNCONDITIONAL = "__is_unconditional__"
#: Channel multipliers of the UNet when its config gives none (UNetModel's default).
DEFAULT_UNET_CHANNEL_MULT = (1, 2, 4, 8)


def _missing_file_hint(path: str | os.PathLike) -> str:
    """How to get the missing file ``path``: the model zoo's download hint, else where models come from."""
    return download_hint(path) or "Pass the right path, or train a model with `python main.py --base <config> -t`."


def require_file(path: str | os.PathLike, what: str, hint: str | None = None) -> Path:
    """``path`` as a Path; FileNotFoundError naming it and ``hint`` (default: how to get a model file)
    when it is not a file."""
    p = Path(path)
    if not p.is_file():
        state = "is a directory, not a file" if p.is_dir() else "not found"
        raise FileNotFoundError(f"{what} {state}: {p}. {hint if hint is not None else _missing_file_hint(p)}")
    return p


def load_config(path: str | os.PathLike | list[str | os.PathLike]) -> DictConfig:
    """The YAML config at ``path`` (several are merged in order, as ``main.py`` merges a run's configs);
    it must have a ``model`` section."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    configs = [OmegaConf.load(require_file(p, "config")) for p in paths]
    config = OmegaConf.merge(*configs) if len(configs) > 1 else configs[0]
    if not isinstance(config, DictConfig) or "model" not in config:
        keys = list(config.keys()) if isinstance(config, DictConfig) else type(config).__name__
        raise ValueError(f"config {', '.join(map(str, paths))} has no 'model' section; found {keys}")
    return config


#: The checkpoint and config file names of a model-zoo folder (models/ldm/<name>/).
ZOO_CKPT, ZOO_CONFIG = "model.ckpt", "config.yaml"


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's weights and config are, and the folder that holds them."""

    ckpt: Path  # the checkpoint
    configs: tuple[Path, ...]  # config files, merged in order
    folder: Path  # the run folder (logs/<run>/) or the model-zoo folder
    kind: str  # "run" (a main.py run folder) or "folder" (checkpoint and config.yaml side by side)


def _run_configs(run: Path) -> tuple[Path, ...]:
    """The merged project configs a main.py run saved (one per start and resume), oldest first."""
    return tuple(Path(p) for p in sorted(glob.glob(str(run / "configs" / "*-project.yaml"))))


def find_model_files(path: str | os.PathLike, config: str | os.PathLike | None = None,
                     flag: str = "--ckpt") -> ModelFiles:
    """The checkpoint and config for ``path``, which may be

    - a ``main.py`` run folder (``logs/<run>/``: ``checkpoints/last.ckpt``, ``configs/*-project.yaml``),
      its ``checkpoints/`` folder, or a checkpoint inside it;
    - a model-zoo folder (``model.ckpt`` and ``config.yaml``), or a checkpoint with ``config.yaml`` beside it.

    ``config``, when given, replaces the config found. FileNotFoundError says what was looked for.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{flag}: {p} does not exist. {_missing_file_hint(p if p.suffix else p / ZOO_CKPT)}")
    if p.is_dir() and p.name == "checkpoints" and (p.parent / "configs").is_dir():
        p = p.parent
    if p.is_dir():
        if (p / "checkpoints").is_dir():
            ckpt, run = p / "checkpoints" / "last.ckpt", p
            if not ckpt.is_file():
                raise FileNotFoundError(f"{flag}: the run folder {p} has no checkpoints/last.ckpt; pass one of "
                                        f"its checkpoints instead")
        elif (p / ZOO_CKPT).is_file():
            ckpt, run = p / ZOO_CKPT, None
        else:
            raise FileNotFoundError(
                f"{flag}: {p} is a folder but neither a main.py run folder (checkpoints/last.ckpt, configs/) nor "
                f"a model folder ({ZOO_CKPT} and {ZOO_CONFIG}). {_missing_file_hint(p / ZOO_CKPT)}")
    else:
        ckpt = p
        run = p.parent.parent if p.parent.name == "checkpoints" and (p.parent.parent / "configs").is_dir() else None
    folder = run if run is not None else ckpt.parent
    if config is not None:
        configs: tuple[Path, ...] = (require_file(config, "--config"),)
    elif run is not None:
        configs = _run_configs(run)
        if not configs:
            raise FileNotFoundError(f"{flag}: the run folder {run} has no configs/*-project.yaml; pass --config")
    else:
        beside = ckpt.parent / ZOO_CONFIG
        if not beside.is_file():
            raise FileNotFoundError(f"{flag}: no {ZOO_CONFIG} beside {ckpt} (looked for {beside}); pass --config "
                                    f"with the config that trained it")
        configs = (beside,)
    return ModelFiles(ckpt=ckpt, configs=configs, folder=folder, kind="run" if run is not None else "folder")


def conditioning_of(model_config: Any) -> str | None:
    """What the model of a config is conditioned on (``cond_stage_key``, e.g. "class_label", "caption"), or None
    for an unconditional one: a DDPM, or a LatentDiffusion whose cond stage is ``__is_unconditional__``."""
    params = _params(model_config)
    cond = params.get("cond_stage_config")
    if cond is None or cond == UNCONDITIONAL:
        return None
    return str(params.get("cond_stage_key", "image"))


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
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"prompt file {p} is not UTF-8 text (byte {err.object[err.start]:#04x} at position "
                         f"{err.start}); save it as UTF-8") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {p} holds no prompt (one prompt per line expected)")
    return prompts


#: The script that samples a model, by what the model is conditioned on (`conditioning_of`).
SCRIPT_FOR_CONDITIONING = {None: "scripts/sample_diffusion.py", "class_label": "scripts/sample_cin.py",
                           "caption": "scripts/txt2img.py", "LR_image": "scripts/superres.py",
                           "masked_image": "scripts/inpaint.py", "nix": "scripts/knn2img.py"}


def check_conditioning(model_config: Any, wanted: tuple[str | None, ...], script: str, where: str) -> None:
    """ValueError, before any model is built, unless the model of a config is conditioned on one of
    ``wanted`` (None: unconditional); the message names the script for the model it is."""
    cond = conditioning_of(model_config)
    if cond in wanted:
        return
    names = ", ".join("nothing (unconditional)" if w is None else repr(w) for w in wanted)
    kind = "unconditional" if cond is None else f"conditioned on {cond!r} (model.params.cond_stage_key)"
    other = SCRIPT_FOR_CONDITIONING.get(cond)
    suggestion = (f"; sample it with {other} (--ckpt takes the same checkpoint or run folder)" if other
                  else "; no script here samples it")
    raise ValueError(f"{where}: {script} samples models conditioned on {names}; this one is {kind}{suggestion}")


def null_class(model_config: Any, n_classes: int) -> int:
    """The class a class-conditional model learned as "no class" for classifier-free guidance: the
    config's ``ucg_class`` (the label its training dropped to), else its last class (cin256-v2's 1000)."""
    ucg_class = _params(model_config).get("ucg_class")
    return int(ucg_class) if ucg_class is not None else n_classes - 1


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


def check_steps(model_config: Any, steps: int, flag: str) -> None:
    """``steps`` sampling steps must fit the model's schedule (``timesteps`` in its config, 1000 by
    default); checked before the model is loaded."""
    timesteps = _params(model_config).get("timesteps", 1000)
    if isinstance(timesteps, int) and steps > timesteps:
        raise ValueError(f"{flag} {steps} is more than the {timesteps} diffusion steps of the model "
                         f"(model.params.timesteps in its config); use at most {timesteps}")


def latent_size(model_config: DictConfig, H: int, W: int, flag: str = "--H/--W") -> tuple[int, int]:
    """The latent (h, w) of an H x W image; ValueError when the model cannot produce that size."""
    f = first_stage_factor(model_config)
    multiple = f * unet_factor(model_config)
    for name, value in ((flag.split("/")[0], H), (flag.split("/")[-1], W)):
        if value <= 0 or value % multiple:
            raise ValueError(f"{name} {value} must be a positive multiple of {multiple} for this model "
                             f"(first-stage downsampling {f} x UNet downsampling {multiple // f})")
    return H // f, W // f
