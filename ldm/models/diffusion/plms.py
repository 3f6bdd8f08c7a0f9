"""PLMS sampler: "Pseudo Numerical Methods for Diffusion Models on Manifolds" (Liu et al., ICLR 2022)."""
from ldm.models.diffusion.ddim import DDIMSampler


class PLMSSampler(DDIMSampler):
    """PLMS (Liu et al. 2022, the ``plms`` step) on the DDIM steps, with the interface of `DDIMSampler`."""

    name = "plms"
