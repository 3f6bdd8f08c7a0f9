"""The command line of the tools in ``scripts/``: the options they share, argument checks, and the
entry point that reports a usage error in one line.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Sequence

from ldm.models.diffusion.sampling import SAMPLER_ALIASES, SAMPLERS
from ldm.scripting.loading import DEFAULT_SEED


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


def check_positive(name: str, value: int | float, allow_zero: bool = False) -> None:
    """ValueError unless ``value`` > 0 (or >= 0)."""
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {value}")


def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    """``items`` in consecutive lists of at most ``size``."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def run_script(main: Callable[[list[str] | None], Any]) -> None:
    """Entry point of a script: run ``main``; report usage errors in one line and exit non-zero."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(sys.argv[1:])
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
