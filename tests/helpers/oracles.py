"""Stand-ins for a LatentDiffusion as the samplers see it, whose answers are known in closed form: an
"oracle" predicts the exact noise of data concentrated at one point x_data, a "zero" model predicts no
noise, a "cond" model returns its conditioning value."""
from __future__ import annotations

import torch
from torch import nn

from ldm.models.diffusion.gaussian_diffusion import SCHEDULE_BUFFERS, GaussianDiffusion, schedule_buffers
from ldm.modules.diffusionmodules.util import extract_into_tensor, make_beta_schedule

SHAPE = (3, 4, 4)
STEPS = 10


class StubDiffusion(nn.Module):
    """The parts of a LatentDiffusion a sampler uses: the schedule buffers, the process over them, apply_model."""

    def __init__(self, mode: str, x_data: torch.Tensor | None = None, timesteps: int = 100) -> None:
        super().__init__()
        self.parameterization = "eps"
        betas = make_beta_schedule("linear", timesteps, linear_start=0.0015, linear_end=0.0195)
        for name, value in schedule_buffers(betas).items():
            self.register_buffer(name, value)
        self.mode = mode
        self.x_data = x_data
        self.calls: list[int] = []

    def apply_model(self, x, t, c):
        self.calls.append(x.shape[0])
        if self.mode == "zero":
            return torch.zeros_like(x)
        if self.mode == "cond":  # the output is the conditioning value, per sample
            return c.view(-1, 1, 1, 1).expand_as(x)
        a = extract_into_tensor(self.sqrt_alphas_cumprod, t, x.shape)
        s = extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x.shape)
        return (x - a * self.x_data) / s  # the exact noise for data at x_data

    @property
    def diffusion(self) -> GaussianDiffusion:
        return GaussianDiffusion({name: getattr(self, name) for name in SCHEDULE_BUFFERS},
                                 parameterization=self.parameterization)


def oracle(batch: int = 2) -> StubDiffusion:
    x_data = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(3))
    return StubDiffusion("oracle", x_data)
