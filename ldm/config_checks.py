"""Checks of a training config before anything is built, so that a mistyped key or value stops ``main.py``
at once with one line that names the value, where it came from and what was expected.

- `check_override_keys`: every ``key=value`` from the command line names a place the configs have (or a
  new constructor parameter under an existing ``params``, which `ldm.util.instantiate_from_config` checks
  against the class), so ``modle.params.embed_dim=3`` does not silently add a section nobody reads.
- `check_values`: trainer step counts, the learning rate, and the sizes, channel and step counts of the
  model and data configs have the right type and range.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigValueError(ValueError):
    """A config key or value that cannot be right; the message names it and where it came from."""


#: Sections that ``lightning:`` may hold although the config files leave them out (main.py has defaults).
LIGHTNING_SECTIONS = ("trainer", "modelcheckpoint", "callbacks", "logger")

#: Trainer options that count steps, epochs or batches, with the smallest value each accepts.
TRAINER_COUNTS = {"max_steps": -1, "max_epochs": -1, "min_steps": 0, "min_epochs": 0, "log_every_n_steps": 1,
                  "num_sanity_val_steps": -1, "accumulate_grad_batches": 1, "check_val_every_n_epoch": 1,
                  "num_nodes": 1}

#: Model and data parameters that are counts or sizes: positive integers wherever they appear.
POSITIVE_INTS = frozenset({
    "image_size", "channels", "in_channels", "out_channels", "model_channels", "out_ch", "ch", "z_channels",
    "embed_dim", "n_embed", "resolution", "timesteps", "num_res_blocks", "batch_size", "n_classes",
    "context_dim", "n_layer", "n_embed", "max_seq_len", "vocab_size", "num_timesteps_cond", "size",
    "degradation_scale", "downscale_f", "crop_size", "num_samples",
})
#: Parameters that are non-negative integers.
NON_NEGATIVE_INTS = frozenset({"num_workers", "disc_start", "log_every_t"})


def _src(path: str, overridden: set[str], files: list[str]) -> str:
    return "the command line" if path in overridden else f"the config ({', '.join(files) or 'no file'})"


def _paths(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every leaf of ``node``; interpolations are left unresolved."""
    if isinstance(node, DictConfig):
        for key in node.keys():
            value = node._get_node(key)
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, (DictConfig, ListConfig)):
                yield from _paths(value, path)
            else:
                yield path, value
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            value = node._get_node(i)
            path = f"{prefix}.{i}"
            if isinstance(value, (DictConfig, ListConfig)):
                yield from _paths(value, path)
            else:
                yield path, value


def override_paths(overrides: DictConfig) -> set[str]:
    """The dotted paths that the command line set."""
    return {path for path, _ in _paths(overrides)}


def check_override_keys(base: DictConfig, overrides: DictConfig, files: list[str]) -> None:
    """Refuse a command-line key whose parent the configs do not have (outside ``params`` mappings, which
    take new constructor arguments, and the ``lightning`` sections that main.py fills in)."""
    for path, _ in _paths(overrides):
        parts = path.split(".")
        if any(p == "" for p in parts):
            raise ConfigValueError(f"override {path!r} from the command line has an empty key; write key=value "
                                   f"with a dotted key such as lightning.trainer.max_steps=100")
        if parts[0] == "lightning":
            if len(parts) > 1 and parts[1] not in LIGHTNING_SECTIONS and parts[1] not in base.get("lightning", {}):
                raise ConfigValueError(
                    f"override {path!r} from the command line: lightning has no section {parts[1]!r}; "
                    f"expected one of {', '.join(LIGHTNING_SECTIONS)}")
            continue
        node: Any = base
        for depth, part in enumerate(parts):
            known = list(node.keys()) if isinstance(node, DictConfig) else None
            if isinstance(node, DictConfig) and part in node:
                node = node[part]
                continue
            if isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if depth == len(parts) - 1 and depth > 0 and parts[depth - 1] == "params":
                break  # a new constructor argument: checked against the class when it is built
            where = ".".join(parts[:depth]) or "the top level"
            raise ConfigValueError(
                f"override {path!r} from the command line: {where} has no key {part!r} in {', '.join(files)}"
                + (f" (keys there: {', '.join(map(str, known))})" if known else "")
                + "; check the spelling")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_values(config: DictConfig, overridden: set[str], files: list[str]) -> None:
    """Refuse values that cannot be right, naming the key, the value and where it came from."""
    trainer = OmegaConf.select(config, "lightning.trainer") or {}
    for name, smallest in TRAINER_COUNTS.items():
        if name in trainer and trainer[name] is not None:
            value = trainer[name]
            if not _is_int(value) or value < smallest:
                path = f"lightning.trainer.{name}"
                raise ConfigValueError(f"{path}={value!r} (from {_src(path, overridden, files)}): expected an "
                                       f"integer >= {smallest}")
    lr = OmegaConf.select(config, "model.base_learning_rate")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        path = "model.base_learning_rate"
        raise ConfigValueError(f"{path}={lr!r} (from {_src(path, overridden, files)}): expected a positive "
                               f"number such as 1.0e-4")
    for section in ("model", "data"):
        if section not in config:
            continue
        for path, node in _paths(config[section], section):
            key = path.rsplit(".", 1)[-1]
            if key not in POSITIVE_INTS and key not in NON_NEGATIVE_INTS:
                continue
            if node._is_interpolation():
                continue
            value = node._value()
            if value is None:
                continue
            smallest = 1 if key in POSITIVE_INTS else 0
            if not _is_int(value) or value < smallest:
                kind = "a positive integer" if smallest else "an integer >= 0"
                raise ConfigValueError(f"{path}={value!r} (from {_src(path, overridden, files)}): expected {kind}")
