"""PLMS sampler: "Pseudo Numerical Methods for Diffusion Models on Manifolds" (Liu et al., ICLR 2022).

The ``plms`` step of `ldm.models.diffusion.sampling` on the DDIM schedule (Song et al., ICLR 2021):
a pseudo improved-Euler first step, then Adams-Bashforth of order 2, 3 and 4 over the previous
noise predictions. Deterministic: eta must be 0.
"""
from __future__ import annotations

from ldm.models.diffusion.ddim import DDIMSampler


class PLMSSampler(DDIMSampler):
    """PLMS (Liu et al. 2022) with the interface of `DDIMSampler`."""

    name = "plms"
