"""Helpers shared by the command-line tools in ``scripts/`` (sampling the latent diffusion models of
Rombach et al., CVPR 2022): checking files and argument values before any model is built, reading the
latent geometry from a config, loading a model from config + checkpoint with a strict key check,
seeding, choosing the device, running a named sampler, and saving images and grids atomically.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from ldm.models.diffusion.sampling import (SAMPLER_ALIASES, SAMPLERS, check_sampler_options, make_sampler,
                                          resolve_sampler_name)
from ldm.util import instantiate_from_config, atomic_path

logger = logging.getLogger(__name__)

#: Seed used when a script is not given one, so that runs repeat by default.
DEFAULT_SEED = 42
#: Parameters of a model config that point at separately downloaded weights; a full checkpoint holds them.
CKPT_PATH_KEYS = ("ckpt_path",)
#: Sub-configs of a LatentDiffusion whose own ``ckpt_path`` a full checkpoint makes redundant.
SUB_CONFIG_KEYS = ("first_stage_config", "cond_stage_config", "unet_config")
#: Channel multipliers of the UNet when its config gives none (UNetModel's default).
DEFAULT_UNET_CHANNEL_MULT = (1, 2, 4, 8)
#: The longest grid file name made from a prompt (file systems allow 255 bytes).
MAX_PROMPT_FILENAME = 200


# --------------------------------------------------------------------------------------------------
# Files and download hints
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Latent geometry, from the config (before any model is built)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Device, seed, model
# --------------------------------------------------------------------------------------------------


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
    from ldm.checkpoint import load_checkpoint

    ckpt = require_file(ckpt, "checkpoint")
    model = instantiate_from_config(strip_ckpt_paths(config.model))
    obj = load_checkpoint(ckpt, map_location="cpu")
    state_dict = obj["state_dict"] if isinstance(obj, Mapping) and "state_dict" in obj else obj
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"checkpoint {ckpt} holds a {type(state_dict).__name__}, not a state dict")
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


# --------------------------------------------------------------------------------------------------
# Samplers from the command line
# --------------------------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser, config: str | None, ckpt: str | None,
                         sampler: str | None = "ddim") -> None:
    """--config, --ckpt, --seed, --device and (unless ``sampler`` is None) --sampler."""
    parser.add_argument("--config", type=str, default=config,
                        help=f"path to the config that builds the model (default: {config or 'beside the checkpoint'})")
    parser.add_argument("--ckpt", type=str, default=ckpt,
                        help=f"path to the model's checkpoint (default: {ckpt or 'from --resume'})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="random seed (the same seed gives the same images)")
    parser.add_argument("--device", type=str, default=None,
                        help="torch device (default: cuda when available, else cpu)")
    if sampler is not None:
        names = ", ".join(list(SAMPLERS) + list(SAMPLER_ALIASES))
        parser.add_argument("--sampler", type=str, default=None,
                            help=f"sampler: {names} (default: {sampler})")


def resolve_sampler(opt: argparse.Namespace, default: str = "ddim", eta: float = 0.0) -> str:
    """The canonical sampler of the parsed options: --sampler, or the original flags --plms / --vanilla_sample.

    ``eta`` is checked against it (PLMS and DPM-Solver++ take eta = 0 only; it does not apply to DDPM).
    """
    implied = [(flag, name) for flag, name in (("plms", "plms"), ("vanilla_sample", "ddpm"))
               if getattr(opt, flag, False)]
    name = getattr(opt, "sampler", None)
    if implied:
        flag, implied_name = implied[0]
        if name is not None and resolve_sampler_name(name) != implied_name:
            raise ValueError(f"--sampler {name} contradicts --{flag} (which selects {implied_name})")
        name = implied_name
    name = resolve_sampler_name(name if name is not None else default)
    return name if name == "ddpm" else check_sampler_options(name, eta)


def run_sampler(name: str, model: torch.nn.Module, steps: int | None, batch_size: int, shape: Sequence[int],
                conditioning: Any = None, eta: float = 0.0, sampler: Any = None, **kwargs: Any) -> torch.Tensor:
    """Latent samples from the sampler ``name`` (``steps`` and ``eta`` do not apply to ``ddpm``)."""
    sampler = make_sampler(name, model) if sampler is None else sampler
    if name == "ddpm":
        samples, _ = sampler.sample(S=None, batch_size=batch_size, shape=shape, conditioning=conditioning,
                                    verbose=False, **kwargs)
    else:
        samples, _ = sampler.sample(S=steps, batch_size=batch_size, shape=shape, conditioning=conditioning,
                                    eta=eta, verbose=False, **kwargs)
    return samples


def decode_to_unit(model: torch.nn.Module, samples: torch.Tensor) -> torch.Tensor:
    """Decode latents (or pass pixel samples through) and map [-1, 1] to [0, 1]."""
    decode = getattr(model, "decode_first_stage", None)
    x = decode(samples) if decode is not None else samples
    return torch.clamp((x + 1.0) / 2.0, min=0.0, max=1.0)


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, C) uint8, truncating like the original scripts (255 * x, astype)."""
    arr = 255.0 * x.detach().float().cpu().numpy().transpose(1, 2, 0)
    return arr.astype(np.uint8)


def save_array_image(arr: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W[, C]) uint8 array as PNG through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return Path(path)


def save_npz(path: str | os.PathLike, *arrays: np.ndarray) -> Path:
    """``np.savez(path, *arrays)`` (keys ``arr_0``, ...) through a temporary file and a rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, *arrays)
    return Path(path)


def save_image(x: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save a (C, H, W) image in [0, 1] as PNG, atomically."""
    return save_array_image(to_uint8(x), path)


def save_grid(images: torch.Tensor | Sequence[torch.Tensor], path: str | os.PathLike, nrow: int) -> Path:
    """Save a torchvision grid of (N, C, H, W) images in [0, 1] (or a list of such batches) atomically."""
    from torchvision.utils import make_grid

    batch = torch.cat(list(images), 0) if not isinstance(images, torch.Tensor) else images
    return save_image(make_grid(batch, nrow=nrow), path)


def prompt_filename(prompt: str) -> str:
    """The original's grid name for a prompt (spaces -> '-'), made safe as one file name."""
    name = prompt.replace(" ", "-").replace(os.sep, "-")
    if os.altsep:
        name = name.replace(os.altsep, "-")
    name = name.encode("utf-8")[:MAX_PROMPT_FILENAME].decode("utf-8", errors="ignore")
    return (name or "empty-prompt") + ".png"


def prepare_outdir(outdir: str | os.PathLike) -> tuple[str, int, int]:
    """Create ``<outdir>/samples``; returns its path and the numbers the next sample and the next grid
    get, so that repeated runs into one folder add files instead of overwriting them (as the original)."""
    sample_path = os.path.join(outdir, "samples")
    os.makedirs(sample_path, exist_ok=True)
    return sample_path, count_entries(sample_path), count_entries(outdir) - 1


def count_entries(folder: str | os.PathLike) -> int:
    """Entries in ``folder`` (0 if it does not exist): the original scripts' running file index."""
    return len(os.listdir(folder)) if os.path.isdir(folder) else 0


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a prompt file; FileNotFoundError / ValueError when missing or empty."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p} (--from-file expects a text file, one prompt per line)")
    prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {p} holds no prompt (one prompt per line expected)")
    return prompts


def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    """``items`` in consecutive lists of at most ``size``."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


# --------------------------------------------------------------------------------------------------
# ImageNet class labels (class-conditional models)
# --------------------------------------------------------------------------------------------------

#: The ImageNet class tables shipped in data/.
IMAGENET_LABELS = Path(__file__).resolve().parents[1] / "data" / "imagenet_clsidx_to_label.txt"
IMAGENET_SYNSETS = Path(__file__).resolve().parents[1] / "data" / "index_synset.yaml"


def imagenet_classes() -> tuple[dict[int, str], dict[int, str]]:
    """(index -> human label, index -> synset id) of the 1000 ImageNet classes."""
    labels: dict[int, str] = {}
    for line in require_file(IMAGENET_LABELS, "ImageNet label table").read_text(encoding="utf-8").splitlines():
        idx, sep, label = line.strip().rstrip(",").partition(":")
        if sep:
            labels[int(idx)] = label.strip().strip("'\"")
    synsets = {int(k): str(v) for k, v in OmegaConf.to_container(OmegaConf.load(
        require_file(IMAGENET_SYNSETS, "ImageNet synset table"))).items()}
    return labels, synsets


def resolve_class(spec: str, n_classes: int | None = None) -> int:
    """A class index from an index ("448"), a synset id ("n02843684") or an ImageNet name ("birdhouse").

    Names match one of the comma-separated synonyms of a label, ignoring case; ValueError when unknown
    or ambiguous, with suggestions.
    """
    spec = str(spec).strip()
    if spec.lstrip("-").isdigit():
        idx = int(spec)
        if idx < 0 or (n_classes is not None and idx >= n_classes):
            raise ValueError(f"class index {idx} is out of range [0, {n_classes}) for this model")
        return idx
    labels, synsets = imagenet_classes()
    by_synset = {v: k for k, v in synsets.items()}
    if spec in by_synset:
        return by_synset[spec]
    wanted = spec.lower()
    matches = sorted({i for i, label in labels.items() if wanted in (s.strip().lower() for s in label.split(","))})
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ValueError(f"class name {spec!r} is ambiguous: " + "; ".join(f"{i}: {labels[i]}" for i in matches)
                         + ". Give the index instead.")
    import difflib

    names = [s.strip() for label in labels.values() for s in label.split(",")]
    close = difflib.get_close_matches(spec, names, n=5)
    raise ValueError(f"unknown class {spec!r}: give an index in [0, 1000), a synset id like n01440764 or an ImageNet "
                     f"class name" + (f" (did you mean: {', '.join(close)}?)" if close else ""))


class OutputSummary:
    """Collects what a script wrote and prints one summary at the end."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def add(self, path: str | os.PathLike) -> Path:
        self.paths.append(Path(path))
        return Path(path)

    def lines(self) -> list[str]:
        by_dir: dict[Path, list[Path]] = {}
        for p in self.paths:
            by_dir.setdefault(p.parent, []).append(p)
        out = [f"wrote {len(self.paths)} file(s):"]
        for folder, files in by_dir.items():
            total = sum(f.stat().st_size for f in files if f.exists())
            names = ", ".join(f.name for f in files[:3]) + (", ..." if len(files) > 3 else "")
            out.append(f"  {folder}/: {len(files)} file(s), {total / 1024:.1f} KiB ({names})")
        return out

    def print(self) -> None:
        print("\n".join(self.lines()))


def check_positive(name: str, value: int | float, allow_zero: bool = False) -> None:
    """ValueError unless ``value`` > 0 (or >= 0)."""
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {value}")


def run_script(main: Callable[[list[str] | None], Any]) -> None:
    """Entry point of a script: run ``main``; report usage errors in one line and exit non-zero."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(sys.argv[1:])
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
