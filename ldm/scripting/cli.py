"""The command line of the tools in ``scripts/``: the options they share, argument checks, and the
entry point that reports a usage error in one line.

This module imports neither torch nor the models, so that ``--help`` and argument errors are immediate;
the scripts import those after parsing their arguments.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, Sequence

from ldm.checkpoint.errors import InvalidCheckpointError, UnsafeCheckpointError
from ldm.sampler_registry import sampler_names
from ldm.threads import apply_threads, choose_threads

#: Seed used when a script is not given one, so that runs repeat by default.
DEFAULT_SEED = 42
#: ``--precision`` choices: float32, bfloat16 or float16 autocast, or autocast's usual type for the device.
PRECISIONS = ("fp32", "bf16", "fp16", "autocast")
#: The names ``--sampler`` accepts: the registry ``ldm.sampler_registry.SAMPLERS`` and its aliases.
SAMPLER_NAMES = tuple(sampler_names())


def add_common_arguments(parser: argparse.ArgumentParser, config: str | None, ckpt: str | None,
                         sampler: str | None = "ddim") -> None:
    """--config, --ckpt, --seed, --device, --threads, --precision, --compile and (unless ``sampler`` is None)
    --sampler."""
    parser.add_argument("--config", type=str, default=None,
                        help="the config that builds the model (default: the one found with the checkpoint"
                             + (f", else {config}" if config else "") + ")")
    parser.add_argument("--ckpt", type=str, default=ckpt,
                        help="the model's checkpoint, a main.py run folder (logs/<run>/, using its last.ckpt and "
                             "configs) or a model folder with model.ckpt and config.yaml "
                             f"(default: {ckpt or 'from --resume'})")
    parser.set_defaults(default_config=config)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="random seed (the same seed gives the same images)")
    parser.add_argument("--device", type=str, default=None,
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=str, default=None, metavar="N",
                        help="CPU threads for torch (default: the cores not busy with other work, or "
                             "OMP_NUM_THREADS / MKL_NUM_THREADS when set)")
    parser.add_argument("--precision", type=str, default="fp32", choices=PRECISIONS,
                        help="fp32, or mixed precision through torch.autocast: bf16, fp16 (CUDA only), autocast "
                             "(bf16 on the CPU, fp16 on CUDA) (default: fp32)")
    parser.add_argument("--compile", action="store_true",
                        help="run the U-Net through torch.compile with frozen weights: the first step compiles "
                             "(a minute or more on a CPU), later steps run faster; where compilation is "
                             "unavailable the model runs eagerly after a warning")
    if sampler is not None:
        names = ", ".join(SAMPLER_NAMES)
        parser.add_argument("--sampler", type=str, default=None,
                            help=f"sampler: {names} (default: {sampler})")


def model_files(opt: argparse.Namespace, ckpt: str | None = None, flag: str = "--ckpt") -> Any:
    """The checkpoint and config of the parsed options (`ldm.scripting.inputs.find_model_files`): ``ckpt``
    (default ``opt.ckpt``) may be a checkpoint, a main.py run folder or a model folder; ``--config`` replaces
    the config found with it, and the script's default config serves where none is found. A checkpoint
    file that does not exist is returned as it is, with that config, so that the script can check its
    arguments against the config first; ``inputs.require_file`` then names the missing file."""
    from pathlib import Path

    from ldm.scripting.inputs import ModelFiles, find_model_files, require_file

    path = ckpt if ckpt is not None else opt.ckpt
    config = opt.config if opt.config is not None else getattr(opt, "default_config", None)
    try:
        return find_model_files(path, opt.config, flag=flag)
    except FileNotFoundError:
        if config is None or os.path.isdir(path):
            raise
    return ModelFiles(ckpt=Path(path), configs=(require_file(config, "config"),), folder=Path(path).parent,
                      kind="folder")


def setup_threads(opt: argparse.Namespace) -> None:
    """Choose and apply the CPU thread count (``--threads``), and log it."""
    logging.getLogger("ldm.threads").info(apply_threads(choose_threads(getattr(opt, "threads", None))).describe())


def prepare_sampling(opt: argparse.Namespace, config: Any, ckpt: Any, steps: int | None,
                     steps_flag: str = "--ddim_steps", eta: float = 0.0) -> tuple[str, Any]:
    """The checks a sampling script makes before it loads its model, in this order: the checkpoint exists,
    ``steps`` fits the model's schedule (read from ``config``); then, with the CPU threads chosen, the
    sampler and its ``eta``, the device, ``--precision`` on that device, and a writable ``--outdir``
    (checked last, so that a refused option leaves no folder behind). Returns the sampler's canonical
    name and the torch device."""
    from ldm.scripting import inputs

    inputs.require_file(ckpt, "checkpoint")
    inputs.check_steps(config.model, steps, steps_flag)
    setup_threads(opt)
    from ldm.scripting import loading, outputs, sampler_options

    sampler_name = sampler_options.resolve_sampler(opt, eta=eta)
    device = loading.choose_device(opt.device)
    loading.autocast_dtype(opt.precision, device)
    outputs.check_outdir(opt.outdir)
    return sampler_name, device


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
    logging.getLogger("ldm.threads").setLevel(logging.INFO)  # the thread count is reported at start
    try:
        main(sys.argv[1:])
    except (OSError, ValueError, InvalidCheckpointError, UnsafeCheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)  # missing or unreadable files, bad arguments, unusable checkpoints
        sys.exit(1)
