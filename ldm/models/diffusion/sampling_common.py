"""Former home of the pieces the samplers share; they live in `ldm.models.diffusion.denoiser` now."""
from ldm.models.diffusion.denoiser import batch_size_of, cat_conditioning  # noqa: F401 (re-exported)
