"""DPM-Solver++ sampler: "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
(Lu, Zhou, Bao, Chen, Li & Zhu 2022, arXiv:2211.01095), the ``dpmpp`` step of `ldm.models.diffusion.sampling`
on integer training steps from T - 1 down to 0, spread evenly in the half log-SNR ("logSNR", the reference
code's choice for latents), in sqrt(t) ("time_quadratic") or in t ("time_uniform")."""
from __future__ import annotations

import torch

from ldm.models.diffusion.sampling import Sampler

#: Below this many steps the final step is first order when ``lower_order_final`` (the reference code's rule).
LOWER_ORDER_FINAL_BELOW = 10
SKIP_TYPES = ("logSNR", "time_quadratic", "time_uniform")


class DPMSolverSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) with the ``DDIMSampler.sample`` interface."""

    name = "dpmpp2m"

    def __init__(self, model: torch.nn.Module, order: int = 2, lower_order_final: bool = False,
                 skip_type: str = "logSNR", name: str | None = None):
        if order not in (1, 2):
            raise ValueError(f"order must be 1 (DDIM) or 2 (DPM-Solver++(2M)); got {order}")
        if skip_type not in SKIP_TYPES:
            raise ValueError(f"skip_type must be one of {', '.join(SKIP_TYPES)}; got {skip_type!r}")
        super().__init__(model, name)
        self.order, self.lower_order_final, self.skip_type = order, lower_order_final, skip_type
        self.spacing = skip_type

    def options(self, eta: float, n: int) -> dict:
        return {"order": self.order, "lower_order_final": self.lower_order_final and n < LOWER_ORDER_FINAL_BELOW}
