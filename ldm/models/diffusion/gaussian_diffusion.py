"""The Gaussian diffusion process, apart from any network and from Lightning.

`GaussianDiffusion` holds a discrete noise schedule and everything computed from it alone: the forward
process q(x_t | x_0) and its posterior q(x_{t-1} | x_t, x_0) ("Denoising Diffusion Probabilistic Models",
Ho et al., NeurIPS 2020, eqs. 4, 6, 7; the variance interpolation ``v_posterior`` of Nichol & Dhariwal,
ICML 2021), the training loss (Ho et al. eq. 14, plus the weighted variational bound and the learned
per-step log-variance weighting of the latent-diffusion code), and the denoiser D(x, sigma) that every
sampler calls. The network is an argument of `training_losses` and `denoiser`, as in DiT's
``training_losses(model, x_start, t)`` and EDM's ``loss(net, images)``: the process can be read and tested
without one.

A `DDPM` keeps the schedule as buffers under the original names (so checkpoints load with
``strict=True``) and hands them to a `GaussianDiffusion` (its ``diffusion`` property); `schedule_buffers`
computes them in float64 and stores float32, as the original did, so the numbers are the same.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ldm.models.diffusion.denoiser import Denoiser
from ldm.modules.diffusionmodules.util import extract_into_tensor

#: What the denoising network predicts: the noise ``eps`` or the clean sample ``x0``.
PARAMETERIZATIONS = ("eps", "x0")

#: Accepted values of ``loss_type``: the distance between the network output and its target.
LOSS_TYPES = ("l1", "l2")

#: Floor of the posterior variance before taking its log (it is 0 at t = 0).
POSTERIOR_LOG_VARIANCE_FLOOR = 1e-20

#: The schedule tensors, under the buffer names of the original ``DDPM`` (``lvlb_weights`` is not saved).
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2", "lvlb_weights")


def validate_parameterization(parameterization: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}; got {parameterization!r}")
    return parameterization


def validate_loss_type(loss_type: str) -> str:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}; got {loss_type!r}")
    return loss_type


def schedule_buffers(betas: Sequence[float] | np.ndarray, v_posterior: float = 0.0,
                     parameterization: str = "eps") -> dict[str, torch.Tensor]:
    """The schedule tensors of `SCHEDULE_BUFFERS` for ``betas``: float64 numpy maths stored as float32 CPU
    tensors, as the original computed its buffers."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.shape[0] < 2:
        raise ValueError(f"betas must be a 1-D schedule of at least 2 timesteps; got shape {betas.shape}")
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])

    def to_torch(x):
        return torch.tensor(x, dtype=torch.float32, device="cpu")

    out = {
        "betas": to_torch(betas),
        "alphas_cumprod": to_torch(alphas_cumprod),
        "alphas_cumprod_prev": to_torch(alphas_cumprod_prev),
        # q(x_t | x_0)
        "sqrt_alphas_cumprod": to_torch(np.sqrt(alphas_cumprod)),
        "sqrt_one_minus_alphas_cumprod": to_torch(np.sqrt(1.0 - alphas_cumprod)),
        "log_one_minus_alphas_cumprod": to_torch(np.log(1.0 - alphas_cumprod)),
        "sqrt_recip_alphas_cumprod": to_torch(np.sqrt(1.0 / alphas_cumprod)),
        "sqrt_recipm1_alphas_cumprod": to_torch(np.sqrt(1.0 / alphas_cumprod - 1)),
    }
    # q(x_{t-1} | x_t, x_0); sigma^2 = (1 - v) * beta_tilde + v * beta
    posterior_variance = ((1 - v_posterior) * betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
                          + v_posterior * betas)
    out["posterior_variance"] = to_torch(posterior_variance)
    out["posterior_log_variance_clipped"] = to_torch(np.log(np.maximum(posterior_variance,
                                                                       POSTERIOR_LOG_VARIANCE_FLOOR)))
    out["posterior_mean_coef1"] = to_torch(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
    out["posterior_mean_coef2"] = to_torch((1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod))

    # weights of the variational bound terms, in float32 from the float32 buffers as in the original
    if validate_parameterization(parameterization) == "eps":
        lvlb_weights = out["betas"] ** 2 / (2 * out["posterior_variance"] * to_torch(alphas) * (1 - out["alphas_cumprod"]))
    else:  # "x0"; the original's expression, kept for its numbers
        ac = out["alphas_cumprod"]
        lvlb_weights = 0.5 * torch.sqrt(ac) / (2.0 * 1 - ac)
    # the t = 0 term has zero posterior variance; reuse the t = 1 weight there
    lvlb_weights[0] = lvlb_weights[1]
    if torch.isnan(lvlb_weights).all():
        raise ValueError("the variational-bound weights are all NaN; check the beta schedule")
    out["lvlb_weights"] = lvlb_weights
    return out


class GaussianDiffusion:
    """A discrete Gaussian diffusion process: noising, the training loss and the samplers' denoiser.

    ``schedule`` maps each name of `SCHEDULE_BUFFERS` to a (T,) tensor on the device the process runs on
    (`schedule_buffers`, or a module's buffers of those names); the tensors are used as given, not copied.
    """

    def __init__(
        self,
        schedule: Mapping[str, torch.Tensor],  # the tensors of SCHEDULE_BUFFERS
        parameterization: str = "eps",  # the network predicts "eps" (the noise) or "x0" (the clean sample)
        loss_type: str = "l2",  # "l1" or "l2" distance between the network output and its target
        l_simple_weight: float = 1.0,  # weight of the simple (unweighted) loss
        original_elbo_weight: float = 0.0,  # weight of the variational-bound term
        v_posterior: float = 0.0,  # posterior variance sigma^2 = (1 - v) * beta_tilde + v * beta
        clip_denoised: bool = True,  # ancestral sampling clamps its x0 estimates to [-1, 1]
        cond_ids: torch.Tensor | None = None,  # (T,) noise level of a diffused conditioning at each step
    ) -> None:
        missing = [name for name in SCHEDULE_BUFFERS if name not in schedule]
        if missing:
            raise ValueError(f"the schedule lacks {', '.join(missing)}; give every tensor of SCHEDULE_BUFFERS")
        for name in SCHEDULE_BUFFERS:
            setattr(self, name, schedule[name])
        self.parameterization = validate_parameterization(parameterization)
        self.loss_type = validate_loss_type(loss_type)
        self.l_simple_weight = l_simple_weight
        self.original_elbo_weight = original_elbo_weight
        self.v_posterior = v_posterior
        self.clip_denoised = clip_denoised
        self.cond_ids = cond_ids
        self.num_timesteps = int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas: Sequence[float] | np.ndarray, **kwargs: Any) -> GaussianDiffusion:
        """The process of ``betas`` (CPU tensors); ``kwargs`` are the constructor's other arguments."""
        buffers = schedule_buffers(betas, kwargs.get("v_posterior", 0.0), kwargs.get("parameterization", "eps"))
        return cls(buffers, **kwargs)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor, **kwargs: Any) -> GaussianDiffusion:
        """The process whose ``alphas_cumprod`` is the given (T,) tensor, kept as it is (device and values); the
        other schedule tensors are computed from the betas it implies, 1 - a_t / a_{t-1}."""
        ac = alphas_cumprod.detach().to("cpu", torch.float64).numpy()
        betas = 1.0 - ac / np.append(1.0, ac[:-1])
        buffers = schedule_buffers(betas, kwargs.get("v_posterior", 0.0), kwargs.get("parameterization", "eps"))
        device = alphas_cumprod.device
        return cls({**{k: v.to(device) for k, v in buffers.items()}, "alphas_cumprod": alphas_cumprod}, **kwargs)

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) (Ho et al. eq. 4); fresh `torch.randn_like` noise when none is given."""
        if noise is None:
            noise = torch.randn_like(x_start)
        return (extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
                + extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)

    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = extract_into_tensor(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = extract_into_tensor(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. eqs. 6-7)."""
        mean = (extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
                + extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        return (mean, extract_into_tensor(self.posterior_variance, t, x_t.shape),
                extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape))

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_0 from x_t and the predicted noise (Ho et al. eq. 4 solved for x_0)."""
        return (extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                - extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * noise)

    def diffuse_conditioning(self, c: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The conditioning ``c`` noised to level ``cond_ids[t]``: the shortened conditioning schedule of a
        `LatentDiffusion` with ``num_timesteps_cond > 1``."""
        if self.cond_ids is None:
            raise ValueError("this process has no conditioning schedule (num_timesteps_cond is 1)")
        return self.q_sample(c, self.cond_ids[t].to(c.device), torch.randn_like(c) if noise is None else noise)

    # ------------------------------------------------------------------ training
    def target(self, x_start: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output: the noise (eps) or the clean sample (x0)."""
        return noise if self.parameterization == "eps" else x_start

    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Element-wise l1 or squared l2 distance."""
        if self.loss_type == "l1":
            return (target - pred).abs()
        return F.mse_loss(target, pred, reduction="none")

    def training_losses(self, network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_start: torch.Tensor,
                        t: torch.Tensor, noise: torch.Tensor | None = None, logvar: torch.Tensor | None = None,
                        log_logvar: bool = False, prefix: str = "train") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of ``network(x_t, t)`` on ``x_start`` (B, C, H, W) at steps ``t``; returns (loss, loss_dict).

        ``l_simple_weight`` times the simple loss (Ho et al. eq. 14), each sample's term divided by
        exp(logvar[t]) plus logvar[t] when a per-step ``logvar`` is given (a learned uncertainty weighting;
        ``log_logvar`` also reports it), plus ``original_elbo_weight`` times the bound weighted by ``lvlb_weights``.
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        model_output = network(self.q_sample(x_start, t, noise), t)
        loss_simple = self.distance(model_output, self.target(x_start, noise)).mean(dim=[1, 2, 3])  # (B,)
        loss_dict = {f"{prefix}/loss_simple": loss_simple.mean()}
        if logvar is None:
            loss = self.l_simple_weight * loss_simple.mean()
        else:
            logvar_t = logvar[t].to(x_start.device)
            loss = loss_simple / torch.exp(logvar_t) + logvar_t
            if log_logvar:
                loss_dict[f"{prefix}/loss_gamma"] = loss.mean()
                loss_dict["logvar"] = logvar.data.mean()
            loss = self.l_simple_weight * loss.mean()
        loss_vlb = (self.lvlb_weights[t] * loss_simple).mean()
        loss_dict[f"{prefix}/loss_vlb"] = loss_vlb
        loss = loss + self.original_elbo_weight * loss_vlb
        loss_dict[f"{prefix}/loss"] = loss
        return loss, loss_dict

    # ------------------------------------------------------------------ sampling
    def denoiser(self, network: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor], cond: Any = None,
                 unconditional_conditioning: Any = None, unconditional_guidance_scale: float = 1.0,
                 denoised_fn: Callable | None = None, score_corrector: Callable | None = None) -> Denoiser:
        """D(x, sigma), the x0 prediction of ``network(x_t, t, cond)`` with classifier-free guidance (see `Denoiser`)."""
        return Denoiser(network, self.alphas_cumprod, self.parameterization, cond, unconditional_conditioning,
                        unconditional_guidance_scale, denoised_fn=denoised_fn, score_corrector=score_corrector)
