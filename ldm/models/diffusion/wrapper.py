"""`DiffusionWrapper`: routes the conditioning into the denoising network.

The conditioning mechanisms of latent diffusion (Rombach et al., CVPR 2022, sec. 3.3): concatenation
with the input (``concat``), cross-attention (``crossattn``), both (``hybrid``), and the class
embedding added to the timestep embedding of ADM (Dhariwal & Nichol, NeurIPS 2021; ``adm``).
The network is stored as ``diffusion_model`` so state-dict keys read ``model.diffusion_model.*``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ldm.util import instantiate_from_config

#: Accepted values of ``conditioning_key`` (None means unconditional).
CONDITIONING_KEYS = (None, "concat", "crossattn", "hybrid", "adm")


def validate_conditioning_key(conditioning_key: str | None) -> str | None:
    if conditioning_key not in CONDITIONING_KEYS:
        allowed = ", ".join(repr(k) for k in CONDITIONING_KEYS)
        raise ValueError(f"conditioning_key must be one of {allowed}; got {conditioning_key!r}")
    return conditioning_key


class DiffusionWrapper(nn.Module):
    """Calls the denoising network with the conditioning placed where ``conditioning_key`` says."""

    def __init__(
        self,
        diff_model_config: Mapping[str, Any],  # {target, params} of the denoising network (a UNetModel)
        conditioning_key: str | None,  # None, "concat", "crossattn", "hybrid" or "adm"
    ) -> None:
        super().__init__()
        self.conditioning_key = validate_conditioning_key(conditioning_key)
        self.diffusion_model = instantiate_from_config(diff_model_config)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c_concat: Sequence[torch.Tensor] | None = None,
                c_crossattn: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        key = self.conditioning_key
        if key is None:
            return self.diffusion_model(x, t)
        if key in ("concat", "hybrid") and c_concat is None:
            raise ValueError(f"conditioning_key {key!r} needs c_concat; got None")
        if key in ("crossattn", "hybrid", "adm") and c_crossattn is None:
            raise ValueError(f"conditioning_key {key!r} needs c_crossattn; got None")
        if key == "concat":
            return self.diffusion_model(torch.cat([x] + list(c_concat), dim=1), t)  # (B, C + C_cond, H, W)
        if key == "crossattn":
            return self.diffusion_model(x, t, context=torch.cat(list(c_crossattn), 1))  # context (B, N, D)
        if key == "hybrid":
            xc = torch.cat([x] + list(c_concat), dim=1)
            return self.diffusion_model(xc, t, context=torch.cat(list(c_crossattn), 1))
        return self.diffusion_model(x, t, y=c_crossattn[0])  # "adm": y (B,) labels or (B, D) vectors
