"""The generation loop that the demo evaluation (``ldm.evaluation.demo_eval``), the model-zoo reproduction
(``ldm.evaluation.zoo``) and ``scripts/sample_diffusion.py`` share: a plan of batches, a seed rule, one
registered sampler drawing each batch (with classifier-free guidance where an unconditional conditioning is
given), and the first stage decoding it; and `run_sampler`, one batch from a sampler, for every script.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ldm import pixels
from ldm.models.diffusion.sampling import make_sampler
from ldm.sampler_registry import resolve_sampler_name, sampler_spec
from ldm.scripting.outputs import decode


@dataclass(frozen=True)
class Batch:
    """Samples ``start`` .. ``start + size - 1`` of a run, drawn as its batch number ``index``."""

    index: int
    start: int
    size: int


@dataclass
class Generated:
    """One batch drawn and decoded."""

    batch: Batch
    images: torch.Tensor  # (size, C, H, W), decoded, nominally in [-1, 1] (not clamped)
    seconds: float  # the sampler's time for the batch, decoding left out

    def uint8(self) -> np.ndarray:
        """The images as (size, H, W, C) uint8, as the sampling scripts save them (`ldm.pixels.to_uint8`)."""
        return pixels.to_uint8_hwc(self.images)


def plan_batches(num_samples: int, batch_size: int) -> list[Batch]:
    """``num_samples`` samples in batches of ``batch_size`` (the last one smaller when it does not divide)."""
    return [Batch(b, start, min(batch_size, num_samples - start))
            for b, start in enumerate(range(0, num_samples, batch_size))]


def sample_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(C, H, W) of the model's samples: its latents for a latent diffusion model."""
    return model.channels, model.image_size, model.image_size


def run_sampler(name: str, model: torch.nn.Module, steps: int | None, batch_size: int, shape: Sequence[int],
                conditioning: Any = None, eta: float = 0.0, sampler: Any = None, **kwargs: Any) -> torch.Tensor:
    """Latent samples from the sampler ``name`` (made for ``model`` unless ``sampler`` is given); ``steps`` and
    ``eta`` are left out for a sampler with fixed steps (see ``SamplerSpec.fixed_steps``)."""
    sampler = make_sampler(name, model) if sampler is None else sampler
    options = {"S": None} if sampler_spec(name).fixed_steps else {"S": steps, "eta": eta}
    samples, _ = sampler.sample(**options, batch_size=batch_size, shape=shape, conditioning=conditioning,
                                verbose=False, **kwargs)
    return samples


def generate(model: torch.nn.Module, sampler: str, steps: int | None, batches: Sequence[Batch], eta: float = 0.0,
             seed: int | None = None, conditioning: Callable[[Batch], tuple[Any, Any]] | None = None,
             scale: float = 1.0, shape: Sequence[int] | None = None, desc: str = "sampling",
             progress: bool = True) -> Iterator[Generated]:
    """Draw ``batches`` with the sampler ``sampler`` in ``steps`` steps and ``eta``; yields each one decoded.

    seed: batch ``b`` is drawn after ``torch.manual_seed(seed + b.index)``, so that any subset of the batches (a
        resumed run) draws the samples of the whole run; None: from the global generator as the caller left it.
    conditioning: (c, uc) of a batch, drawn after its seed; guidance at ``scale`` where uc is not None.
    shape: (C, H, W) of the samples (default `sample_shape`). Each batch is one `run_sampler` call. The caller
    chooses the weights and precision by the block it iterates in (EMA scope, autocast).
    """
    name = resolve_sampler_name(sampler)
    shape = tuple(shape) if shape is not None else sample_shape(model)
    drawer = make_sampler(name, model)
    with tqdm(total=sum(b.size for b in batches), desc=desc, unit="img", disable=not progress) as bar:
        for batch in batches:
            if seed is not None:
                torch.manual_seed(seed + batch.index)
            c, uc = conditioning(batch) if conditioning is not None else (None, None)
            guidance = {"unconditional_guidance_scale": scale, "unconditional_conditioning": uc} if uc is not None else {}
            started = time.perf_counter()
            z = run_sampler(name, model, steps, batch.size, shape, conditioning=c, eta=eta, sampler=drawer,
                            **guidance)
            seconds = time.perf_counter() - started
            yield Generated(batch, decode(model, z), seconds)
            bar.update(batch.size)
