"""Samplers from the command line: the sampler the options name, and running it for a batch."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

import torch

from ldm.models.diffusion.sampling import check_sampler_options, make_sampler, resolve_sampler_name


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
