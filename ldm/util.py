"""Small helpers shared across the package.

`instantiate_from_config` builds an object from a ``{target, params}`` mapping, the format every
YAML config of the project uses. Errors name the offending value and where in the config it sits.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os
from inspect import isfunction
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

#: Sentinels accepted by `LatentDiffusion` in place of a ``cond_stage_config``.
FIRST_STAGE_SENTINEL = "__is_first_stage__"
UNCONDITIONAL_SENTINEL = "__is_unconditional__"

#: Class paths of the original configs that pointed into the taming-transformers package.
#: They resolve to this project's own implementations, so taming never needs to be installed.
TARGET_ALIASES = {
    "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator":
        "ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
    "taming.modules.losses.vqperceptual.DummyLoss": "ldm.modules.losses.contperceptual.DummyLoss",
    "taming.modules.vqvae.quantize.VectorQuantizer2": "ldm.modules.vqvae.quantize.VectorQuantizer2",
    "taming.modules.vqvae.quantize.VectorQuantizer": "ldm.modules.vqvae.quantize.VectorQuantizer2",
    "taming.modules.losses.lpips.LPIPS": "ldm.modules.losses.lpips.LPIPS",
    "taming.modules.discriminator.model.NLayerDiscriminator":
        "ldm.modules.losses.discriminator.NLayerDiscriminator",
    "taming.data.faceshq.CelebAHQTrain": "ldm.data.faceshq.CelebAHQTrain",
    "taming.data.faceshq.CelebAHQValidation": "ldm.data.faceshq.CelebAHQValidation",
    "taming.data.faceshq.FFHQTrain": "ldm.data.faceshq.FFHQTrain",
    "taming.data.faceshq.FFHQValidation": "ldm.data.faceshq.FFHQValidation",
}

#: The checkout (or installed source tree) that holds configs/, data/ and models/.
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FONT = str(REPO_ROOT / "data" / "DejaVuSans.ttf")


class ConfigError(ValueError, TypeError):
    """A config that cannot be turned into an object; the message names the value and its location.

    It is both a ValueError and a TypeError, so callers that catch either of the errors a constructor
    raises for a bad argument also catch it after it has been annotated with the config location.
    """


def _config_location(config: Any, where: str | None) -> str:
    if where:
        return where
    try:  # an OmegaConf node knows its own path inside the loaded file
        from omegaconf import DictConfig

        if isinstance(config, DictConfig):
            key = config._get_full_key(None)
            if key:
                return str(key)
    except Exception:  # noqa: BLE001 - the location is a courtesy; never fail because of it
        pass
    return "<config>"


def _to_plain(value: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def get_obj_from_str(string: str, reload: bool = False, where: str = "<config>") -> Any:
    """Import ``package.module.Name`` and return ``Name``."""
    if not isinstance(string, str) or "." not in string:
        raise ConfigError(f"{where}.target must be a dotted class path like 'ldm.models.autoencoder.AutoencoderKL'; "
                          f"got {string!r}")
    string = TARGET_ALIASES.get(string, string)
    module_name, cls_name = string.rsplit(".", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ConfigError(f"{where}.target {string!r}: module {module_name!r} cannot be imported ({err})") from err
    if reload:
        module = importlib.reload(module)
    try:
        return getattr(module, cls_name)
    except AttributeError as err:
        raise ConfigError(f"{where}.target {string!r}: module {module_name!r} has no attribute {cls_name!r}") from err


def _check_params(obj: Any, params: Mapping[str, Any], target: str, where: str) -> None:
    """Raise if ``params`` holds a keyword the callable does not take."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    allowed = [n for n, p in sig.parameters.items()
               if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    unknown = [k for k in params if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}.params: {target} takes no parameter {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(allowed)}")


def instantiate_from_config(config: Any, where: str | None = None, **extra: Any) -> Any:
    """Build ``target(**params, **extra)`` from a mapping with keys ``target`` and ``params``.

    ``where`` names the config location for error messages (for example ``model.params.unet_config``);
    OmegaConf nodes supply it themselves.
    """
    where = _config_location(config, where)
    if config is None:
        raise ConfigError(f"{where}: expected a mapping with a 'target' key; got None")
    if isinstance(config, str):
        if config in (FIRST_STAGE_SENTINEL, UNCONDITIONAL_SENTINEL):
            return None
        raise ConfigError(f"{where}: expected a mapping with a 'target' key; got the string {config!r}")
    if not isinstance(config, Mapping) and not hasattr(config, "keys"):
        raise ConfigError(f"{where}: expected a mapping with a 'target' key; got {type(config).__name__}")
    if "target" not in config:
        raise ConfigError(f"{where}: missing key 'target' (the dotted class path to build); "
                          f"keys present: {sorted(map(str, config.keys()))}")
    target = config["target"]
    obj = get_obj_from_str(target, where=where)
    params = config.get("params", None)
    params = {} if params is None else dict(params)
    params.update(extra)
    _check_params(obj, params, target, where)
    try:
        return obj(**params)
    except ConfigError:
        raise  # already names the nested config it came from
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where} ({target}): {err}") from err


def resolve_path(path: str | os.PathLike) -> str:
    """``path`` itself when it exists or is absolute, else the same relative path inside the repository
    when it exists there, else ``path`` unchanged (the caller reports it as missing)."""
    path = os.fspath(path)
    if os.path.isabs(path) or os.path.exists(path):
        return path
    in_repo = REPO_ROOT / path
    return str(in_repo) if in_repo.exists() else path


def exists(x: Any) -> bool:
    return x is not None


def default(val: Any, d: Any) -> Any:
    """``val`` if it is not None, else ``d`` (called first when it is a function)."""
    if exists(val):
        return val
    return d() if isfunction(d) else d


def ismap(x: Any) -> bool:
    """A batch of multi-channel maps: a 4-D tensor with more than 3 channels."""
    return isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] > 3


def isimage(x: Any) -> bool:
    """A batch of images: a 4-D tensor with 1 or 3 channels."""
    return isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] in (1, 3)


def channels_first(images: torch.Tensor) -> torch.Tensor:
    """Data-loader images ``(B, H, W, C)`` (or ``(B, H, W)``) as a contiguous float ``(B, C, H, W)`` tensor."""
    if images.ndim == 3:
        images = images[..., None]  # (B, H, W, 1)
    return images.permute(0, 3, 1, 2).to(memory_format=torch.contiguous_format).float()  # (B, C, H, W)


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch dimension."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def count_params(model: torch.nn.Module, verbose: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if verbose:
        logger.info("%s has %.2f M params.", model.__class__.__name__, total * 1.0e-6)
    return total


def log_txt_as_img(wh: tuple[int, int], xc: list[str], size: int = 10, font_path: str = DEFAULT_FONT) -> torch.Tensor:
    """Render each caption in ``xc`` onto a white ``wh`` canvas; returns ``(B, 3, H, W)`` in [-1, 1]."""
    chars_per_line = int(40 * (wh[0] / 256))
    try:
        font = ImageFont.truetype(font_path, size=size)
    except OSError as err:
        raise FileNotFoundError(f"font file {font_path!r} cannot be read; it ships with the repository as "
                                f"data/DejaVuSans.ttf") from err
    out = []
    for caption in xc:
        canvas = Image.new("RGB", wh, color="white")
        draw = ImageDraw.Draw(canvas)
        caption = str(caption)
        lines = "\n".join(caption[start:start + chars_per_line] for start in range(0, len(caption), chars_per_line))
        draw.text((0, 0), lines, fill="black", font=font)
        arr = np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        out.append(torch.from_numpy(arr))
    return torch.stack(out)
