"""The samplers by name: which step function of `ldm.models.diffusion.sampling` each runs, on which
default grid of noise levels, with which options, behind which class. A new sampler is one step
function there and one line here. This module imports nothing heavy, so that the command line can
list the names before torch is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

SAMPLING = "ldm.models.diffusion.sampling"


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its step function, default grid and fixed options, and the class that adapts it."""

    step: str | Callable  # the step function: its name in ldm.models.diffusion.sampling, or the function
    spacing: str  # default grid (see DiscreteSchedule.grid)
    options: dict = field(default_factory=dict)
    takes_eta: bool = False  # stochastic with eta > 0
    adapter: str = f"{SAMPLING}.Sampler"  # class with the original samplers' .sample(...)
    fixed_steps: bool = False  # runs all of the model's training steps: takes no step count and no eta


#: The samplers by name.
SAMPLERS = {
    "ddpm": SamplerSpec("ancestral", "all", takes_eta=True, adapter=f"{SAMPLING}.DDPMSampler", fixed_steps=True),
    "ddim": SamplerSpec("ancestral", "ddim", takes_eta=True, adapter="ldm.models.diffusion.ddim.DDIMSampler"),
    "plms": SamplerSpec("plms", "ddim", adapter="ldm.models.diffusion.plms.PLMSSampler"),
    "dpmpp2m": SamplerSpec("dpmpp", "logSNR", adapter="ldm.models.diffusion.dpm_solver.DPMSolverSampler"),
    "dpmpp3m": SamplerSpec("dpmpp", "log_sigma", {"order": 3}),
    "dpm3m": SamplerSpec("dpmpp", "time_quadratic", {"order": 3, "predict": "eps"}),  # DPM-Solver-3 on the noise
    "unipc": SamplerSpec("unipc", "log_sigma", {"order": 2}),  # UniPC-2, Zhao et al.'s choice for guided sampling
    "unipc3": SamplerSpec("unipc", "log_sigma"),  # UniPC-3, their choice for unconditional sampling
    "euler_karras": SamplerSpec("ancestral", "karras", {"eta": 0.0}),
    "heun_karras": SamplerSpec("heun", "karras"),
}
#: Other spellings accepted on the command line.
SAMPLER_ALIASES = {"dpm_solver++": "dpmpp2m", "dpmsolver++": "dpmpp2m", "dpm++2m": "dpmpp2m", "dpm++3m": "dpmpp3m"}


def sampler_names() -> list[str]:
    """Every accepted name, each canonical name followed by its aliases."""
    return [n for name in SAMPLERS for n in [name, *(a for a, c in SAMPLER_ALIASES.items() if c == name)]]


def resolve_sampler_name(name: str) -> str:
    """The canonical name for ``name``; raises ValueError listing the allowed names."""
    key = str(name).strip().lower()
    key = SAMPLER_ALIASES.get(key, key)
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(sampler_names())}")
    return key


def sampler_spec(name: str) -> SamplerSpec:
    """The registry entry of ``name`` (or one of its aliases); raises ValueError listing the allowed names."""
    return SAMPLERS[resolve_sampler_name(name)]


def check_sampler_options(name: str, eta: float = 0.0) -> str:
    """Validate a sampler name together with its eta before any model is built; returns the canonical name."""
    key = resolve_sampler_name(name)
    if eta < 0:
        raise ValueError(f"eta must be >= 0; got {eta}")
    if eta != 0 and not SAMPLERS[key].takes_eta:
        raise ValueError(f"sampler {key!r} is deterministic and takes eta=0 only; got eta={eta} "
                         f"(use --sampler ddim for eta > 0)")
    return key


def check_run_options(name: str, eta: float = 0.0) -> str:
    """`check_sampler_options` for a run that passes ``eta`` on to any sampler: a sampler with fixed steps takes
    no eta (the run leaves it out), so its eta is not checked. Returns the canonical name."""
    key = resolve_sampler_name(name)
    return key if SAMPLERS[key].fixed_steps else check_sampler_options(key, eta)


def run_steps(name: str, steps: int | None, num_timesteps: int) -> int | None:
    """The steps a run of ``name`` takes: ``steps``, or all ``num_timesteps`` training steps for a sampler with
    fixed steps."""
    return int(num_timesteps) if sampler_spec(name).fixed_steps else steps
