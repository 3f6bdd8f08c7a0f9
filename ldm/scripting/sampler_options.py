"""The sampler that a script's command-line options name: ``--sampler``, or the original flags ``--plms`` and
``--vanilla_sample``, checked together with the eta of the run."""
from __future__ import annotations

import argparse

from ldm.sampler_registry import check_run_options, resolve_sampler_name


def resolve_sampler(opt: argparse.Namespace, default: str = "ddim", eta: float = 0.0) -> str:
    """The canonical sampler of the parsed options: --sampler, or the original flags --plms / --vanilla_sample.

    ``eta`` is checked against it (PLMS and DPM-Solver++ take eta = 0 only; DDPM, with fixed steps, takes none).
    """
    implied = [(flag, name) for flag, name in (("plms", "plms"), ("vanilla_sample", "ddpm"))
               if getattr(opt, flag, False)]
    name = getattr(opt, "sampler", None)
    if implied:
        flag, implied_name = implied[0]
        if name is not None and resolve_sampler_name(name) != implied_name:
            raise ValueError(f"--sampler {name} contradicts --{flag} (which selects {implied_name})")
        name = implied_name
    return check_run_options(name if name is not None else default, eta)
