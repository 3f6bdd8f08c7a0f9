"""The BSR degradation (Zhang et al., ICCV 2021) that makes the low-resolution inputs of the
super-resolution data: `degradation_fn_bsr` (full) and `degradation_fn_bsr_light` (the milder one)."""
from ldm.modules.image_degradation.bsrgan import degradation_bsrgan_variant as degradation_fn_bsr
from ldm.modules.image_degradation.bsrgan_light import degradation_bsrgan_variant as degradation_fn_bsr_light

__all__ = ["degradation_fn_bsr", "degradation_fn_bsr_light"]
