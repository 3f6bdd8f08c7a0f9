"""The command line of the checkpoint package: ``python -m ldm.checkpoint convert in.ckpt out.safetensors``
writes a checkpoint's weights to a safetensors file; ``python -m ldm.checkpoint info PATH`` shows what a
checkpoint holds."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

import torch

from ldm.checkpoint.errors import InvalidCheckpointError, UnsafeCheckpointError
from ldm.checkpoint.state_dicts import extract_state_dict, load_checkpoint
from ldm.checkpoint.saving import convert_to_safetensors
from ldm.checkpoint.standins import to_builtin

#: The description ``--help`` shows.
DESCRIPTION = "Safe loading and atomic saving of model-zoo checkpoints."


def _describe(path: str) -> list[str]:
    obj = load_checkpoint(path)
    lines = [f"{path}: {type(obj).__name__}"]
    if isinstance(obj, Mapping):
        lines.append("top-level keys: " + ", ".join(map(str, obj.keys())))
        for key in ("epoch", "global_step", "pytorch-lightning_version", "hyper_parameters", "hparams"):
            if key in obj:
                lines.append(f"{key}: {to_builtin(obj[key])}")
    state_dict = extract_state_dict(obj, path)
    n_params = sum(v.numel() for v in state_dict.values() if isinstance(v, torch.Tensor))
    lines.append(f"state_dict: {len(state_dict)} entries, {n_params:,} elements")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m ldm.checkpoint {convert IN OUT | info PATH}``."""
    parser = argparse.ArgumentParser(prog="python -m ldm.checkpoint", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="write the weights of a .ckpt to a .safetensors file")
    convert.add_argument("src", help="checkpoint to read (.ckpt, .pt, .pth, .safetensors)")
    convert.add_argument("dst", help="output file, ending in .safetensors")
    info = sub.add_parser("info", help="show what a checkpoint holds")
    info.add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            out = convert_to_safetensors(args.src, args.dst)
            print(f"wrote {out}")
        else:
            print("\n".join(_describe(args.path)))
    except (OSError, InvalidCheckpointError, UnsafeCheckpointError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
