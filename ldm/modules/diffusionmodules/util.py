"""Helpers of the diffusion U-Net and its samplers.

Noise schedules (linear / "scaled linear" of Rombach et al. 2022, cosine of Nichol & Dhariwal 2021,
``betas_for_alpha_bar``), the DDIM step selection and its sigmas (Song et al. 2021, eq. 16),
the sinusoidal timestep embedding (Vaswani et al. 2017, as used by Ho et al. 2020), gradient
checkpointing (Chen et al. 2016) and the small layer factories of the ADM U-Net
(Dhariwal & Nichol 2021), whose 2-D convolutions are the fast-path ``Conv2d`` of ``ldm.modules.fastpaths``.
Numerics follow the original CompVis code, checkpoints depend on them. ``mean_flat`` (``ldm.util``) is
re-exported under the original's path.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.utils.checkpoint
from einops import repeat

from ldm.modules.fastpaths import Conv2d
from ldm.util import instantiate_from_config, mean_flat  # noqa: F401 - mean_flat: the original's name here too

logger = logging.getLogger(__name__)

BETA_SCHEDULES = ("linear", "cosine", "sqrt_linear", "sqrt")
DDIM_DISCRETIZATIONS = ("uniform", "quad")
#: Largest beta the cosine schedule may reach (Nichol & Dhariwal 2021, sec. 3.2).
MAX_COSINE_BETA = 0.999
#: Groups of the U-Net's GroupNorm layers.
NORM_GROUPS = 32


def make_beta_schedule(schedule: str, n_timestep: int, linear_start: float = 1e-4, linear_end: float = 2e-2,
                       cosine_s: float = 8e-3) -> np.ndarray:
    """The betas of ``n_timestep`` diffusion steps, float64, as a numpy array.

    ``linear`` is linear in sqrt(beta) (the "scaled linear" schedule of the LDM configs), ``sqrt_linear``
    linear in beta, ``sqrt`` the square root of a linear ramp, ``cosine`` Nichol & Dhariwal 2021, eq. 17.
    """
    if schedule == "linear":
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep, dtype=torch.float64) ** 2
    elif schedule == "cosine":
        timesteps = torch.arange(n_timestep + 1, dtype=torch.float64) / n_timestep + cosine_s
        alphas = torch.cos(timesteps / (1 + cosine_s) * np.pi / 2).pow(2)
        alphas = alphas / alphas[0]
        betas = torch.clamp(1 - alphas[1:] / alphas[:-1], min=0, max=MAX_COSINE_BETA)
    elif schedule == "sqrt_linear":
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64)
    elif schedule == "sqrt":
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64) ** 0.5
    else:
        raise ValueError(f"schedule must be one of {', '.join(BETA_SCHEDULES)}; got {schedule!r}")
    return betas.numpy()


def make_ddim_timesteps(ddim_discr_method: str, num_ddim_timesteps: int, num_ddpm_timesteps: int,
                        verbose: bool = True) -> np.ndarray:
    """The DDPM steps a DDIM sampler visits, each shifted by +1 as in the original.

    The shift makes the final alpha the one of the first noising step rather than of pure data.
    """
    if ddim_discr_method == "uniform":
        if not 0 < num_ddim_timesteps <= num_ddpm_timesteps:
            raise ValueError(f"num_ddim_timesteps must be in [1, {num_ddpm_timesteps}]; got {num_ddim_timesteps}")
        c = num_ddpm_timesteps // num_ddim_timesteps
        ddim_timesteps = np.asarray(list(range(0, num_ddpm_timesteps, c)))
    elif ddim_discr_method == "quad":
        ddim_timesteps = (np.linspace(0, np.sqrt(num_ddpm_timesteps * 0.8), num_ddim_timesteps) ** 2).astype(int)
    else:
        raise ValueError(f"ddim_discr_method must be one of {', '.join(DDIM_DISCRETIZATIONS)}; "
                         f"got {ddim_discr_method!r}")
    steps_out = ddim_timesteps + 1
    steps_out = steps_out[steps_out < num_ddpm_timesteps]  # when T % S != 0 the shift can reach step T, past the last
    if verbose:
        logger.info("Selected timesteps for ddim sampler: %s", steps_out)
    return steps_out


def make_ddim_sampling_parameters(alphacums: np.ndarray | torch.Tensor, ddim_timesteps: np.ndarray, eta: float,
                                  verbose: bool = True) -> tuple[Any, Any, Any]:
    """``(sigmas, alphas, alphas_prev)`` of DDIM (Song et al. 2021, eq. 16) at the selected steps.

    Returns numpy arrays for a numpy ``alphacums`` and tensors for a tensor one; ``alphas`` keeps the
    dtype of ``alphacums``, ``alphas_prev`` and ``sigmas`` are float64 as in the original.
    """
    as_tensor = isinstance(alphacums, torch.Tensor)
    acp = alphacums.detach().cpu().numpy() if as_tensor else np.asarray(alphacums)
    ddim_timesteps = np.asarray(ddim_timesteps)
    alphas = acp[ddim_timesteps]
    alphas_prev = np.asarray([acp[0]] + acp[ddim_timesteps[:-1]].tolist())
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    if verbose:
        logger.info("Selected alphas for ddim sampler: a_t: %s; a_(t-1): %s", alphas, alphas_prev)
        logger.info("For the chosen value of eta, which is %s, this results in the following sigma_t schedule "
                    "for ddim sampler %s", eta, sigmas)
    if as_tensor:
        return torch.from_numpy(np.asarray(sigmas)), torch.from_numpy(alphas), torch.from_numpy(alphas_prev)
    return sigmas, alphas, alphas_prev


def betas_for_alpha_bar(num_diffusion_timesteps: int, alpha_bar: Callable[[float], float],
                        max_beta: float = MAX_COSINE_BETA) -> np.ndarray:
    """Discretize a continuous ``alpha_bar(t)``, t in [0, 1], into betas (Nichol & Dhariwal 2021, eq. 17)."""
    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas)


def extract_into_tensor(a: torch.Tensor, t: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
    """``a[t]`` per batch element, shaped ``(B, 1, ..., 1)`` to broadcast against ``x_shape``."""
    b = t.shape[0]
    out = a.gather(-1, t)
    return out.reshape(b, *((1,) * (len(x_shape) - 1)))


def checkpoint(func: Callable[..., Any], inputs: Sequence[Any], params: Iterable[torch.Tensor] | None,
               flag: bool) -> Any:
    """``func(*inputs)``, recomputing its activations in the backward pass when ``flag`` is true.

    Gradient checkpointing (Chen et al. 2016) through ``torch.utils.checkpoint`` (non-reentrant): the
    forward keeps only the inputs, not the intermediate activations. ``params`` is accepted for the
    original's signature; the non-reentrant implementation finds the parameters by itself.
    Without grad mode there is nothing to save, and ``func`` runs directly.
    """
    if flag and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000,
                       repeat_only: bool = False) -> torch.Tensor:
    """Sinusoidal embeddings ``(B, dim)`` of (possibly fractional) timesteps ``(B,)``: cosines, then sines.

    ``max_period`` sets the lowest frequency; ``repeat_only`` repeats the raw timestep ``dim`` times instead.
    """
    if repeat_only:
        return repeat(timesteps, "b -> b d", d=dim)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    freqs = freqs.to(device=timesteps.device)
    args = timesteps[:, None].float() * freqs[None]  # (B, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)  # (B, dim)
    return embedding


def zero_module(module: nn.Module) -> nn.Module:
    """Zero the parameters of ``module`` in place and return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def scale_module(module: nn.Module, scale: float) -> nn.Module:
    """Multiply the parameters of ``module`` by ``scale`` in place and return it."""
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that normalizes in float32 whatever the input dtype, and returns the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 or (x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)
                                        and (self.weight is None or self.weight.dtype == torch.float32)):
            # float32 input, or the CPU kernel's mixed mode: reduced-precision input, float32 statistics and
            # affine parameters, rounded once on output; the same numbers as the round trip below without
            # its two full-size copies
            return nn.functional.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        out = nn.functional.group_norm(x.float(), self.num_groups, weight, bias, self.eps)
        return out.type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The U-Net's normalization layer: GroupNorm with 32 groups, computed in float32."""
    return GroupNorm32(NORM_GROUPS, channels)


class SiLU(nn.Module):
    """x * sigmoid(x) (Elfwing et al. 2018); kept for code that names it, ``nn.SiLU`` is the same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def _check_dims(dims: int) -> None:
    if dims not in (1, 2, 3):
        raise ValueError(f"dims must be 1, 2 or 3; got {dims!r}")


def conv_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1-D, 2-D (``fastpaths.Conv2d``, a GEMM where that is faster) or 3-D convolution."""
    _check_dims(dims)
    return (nn.Conv1d, Conv2d, nn.Conv3d)[dims - 1](*args, **kwargs)


def linear(*args: Any, **kwargs: Any) -> nn.Linear:
    """A linear layer."""
    return nn.Linear(*args, **kwargs)


def avg_pool_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1-D, 2-D or 3-D average pooling."""
    _check_dims(dims)
    return (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[dims - 1](*args, **kwargs)


def noise_like(shape: Sequence[int], device: torch.device | str, repeat: bool = False) -> torch.Tensor:
    """Standard normal noise of ``shape``; with ``repeat`` one draw shared by the whole batch."""
    if repeat:
        noise = torch.randn((1, *shape[1:]), device=device)
        return noise.repeat(shape[0], *((1,) * (len(shape) - 1)))
    return torch.randn(shape, device=device)


class HybridConditioner(nn.Module):
    """Two conditioners at once: one whose output is concatenated, one attended to."""

    def __init__(
        self,
        c_concat_config: Any,  # {target, params} of the encoder whose output is concatenated to the input
        c_crossattn_config: Any,  # {target, params} of the encoder whose output is cross-attended
    ) -> None:
        super().__init__()
        self.concat_conditioner = instantiate_from_config(c_concat_config)
        self.crossattn_conditioner = instantiate_from_config(c_crossattn_config)

    def forward(self, c_concat: Any, c_crossattn: Any) -> dict[str, list[Any]]:
        c_concat = self.concat_conditioner(c_concat)
        c_crossattn = self.crossattn_conditioner(c_crossattn)
        return {"c_concat": [c_concat], "c_crossattn": [c_crossattn]}
