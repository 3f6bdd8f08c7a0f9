"""The Gaussian diffusion process: noise schedule buffers and the closed-form q / posterior formulas.

Implements the forward process and the true posterior of "Denoising Diffusion Probabilistic Models"
(Ho et al., NeurIPS 2020, eqs. 4, 6, 7 and 15) with the variance-interpolation option of "Improved
Denoising Diffusion Probabilistic Models" (Nichol & Dhariwal, ICML 2021). The buffer names and their
float64-then-float32 computation follow the original latent-diffusion code, so checkpoints load with
``strict=True`` and give the same numbers.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ldm.modules.diffusionmodules.util import extract_into_tensor, make_beta_schedule
from ldm.modules.distributions.distributions import normal_kl
from ldm.util import mean_flat

#: What the denoising network predicts: the noise ``eps`` or the clean sample ``x0``.
PARAMETERIZATIONS = ("eps", "x0")

#: Floor of the posterior variance before taking its log (it is 0 at t = 0).
POSTERIOR_LOG_VARIANCE_FLOOR = 1e-20


def validate_parameterization(parameterization: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}; got {parameterization!r}")
    return parameterization


class GaussianDiffusionMixin:
    """Schedule buffers and the q(x_t | x_0), q(x_{t-1} | x_t, x_0) formulas, for a `torch.nn.Module`.

    Expects ``self.v_posterior`` and ``self.parameterization`` to be set before `register_schedule`.
    """

    def register_schedule(self, given_betas: Sequence[float] | np.ndarray | None = None, beta_schedule: str = "linear",
                          timesteps: int = 1000, linear_start: float = 1e-4, linear_end: float = 2e-2,
                          cosine_s: float = 8e-3) -> None:
        """Register the schedule buffers (float64 numpy maths, stored as float32 like the original).

        The numbers are computed on the CPU; the buffers go to the device of the module's parameters
        (or the default device), so a model built under ``torch.device("meta")`` gets meta buffers; parameters
        that alone are on the meta device (``ldm.scripting.loading.parameters_on_meta``) leave them real.
        """
        with torch.device("cpu"):
            buffers = self._schedule_buffers(given_betas, beta_schedule, timesteps, linear_start, linear_end,
                                             cosine_s)
        first_param = next(self.parameters(), None)
        device = (first_param.device if first_param is not None and not first_param.is_meta
                  else torch.get_default_device())
        for name, value in buffers.items():
            self.register_buffer(name, value.to(device), persistent=name != "lvlb_weights")
        self.num_timesteps = int(buffers["betas"].shape[0])
        self.linear_start = linear_start
        self.linear_end = linear_end

    def _schedule_buffers(self, given_betas, beta_schedule: str, timesteps: int, linear_start: float,
                          linear_end: float, cosine_s: float) -> dict[str, torch.Tensor]:
        if given_betas is not None:
            betas = np.asarray(given_betas, dtype=np.float64)
        else:
            betas = make_beta_schedule(beta_schedule, timesteps, linear_start=linear_start, linear_end=linear_end,
                                       cosine_s=cosine_s)
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.shape[0] < 2:
            raise ValueError(f"betas must be a 1-D schedule of at least 2 timesteps; got shape {betas.shape}")
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas, axis=0)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])

        def to_torch(x):
            return torch.tensor(x, dtype=torch.float32)

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
        posterior_variance = ((1 - self.v_posterior) * betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
                              + self.v_posterior * betas)
        out["posterior_variance"] = to_torch(posterior_variance)
        out["posterior_log_variance_clipped"] = to_torch(
            np.log(np.maximum(posterior_variance, POSTERIOR_LOG_VARIANCE_FLOOR)))
        out["posterior_mean_coef1"] = to_torch(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        out["posterior_mean_coef2"] = to_torch((1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod))

        # weights of the variational bound terms, in float32 from the float32 buffers as in the original
        if self.parameterization == "eps":
            lvlb_weights = out["betas"] ** 2 / (
                2 * out["posterior_variance"] * to_torch(alphas) * (1 - out["alphas_cumprod"]))
        else:  # "x0"; the original's expression, kept for its numbers
            ac = out["alphas_cumprod"]
            lvlb_weights = 0.5 * torch.sqrt(ac) / (2.0 * 1 - ac)
        # the t = 0 term has zero posterior variance; reuse the t = 1 weight there
        lvlb_weights[0] = lvlb_weights[1]
        if torch.isnan(lvlb_weights).all():
            raise ValueError("the variational-bound weights are all NaN; check the beta schedule")
        out["lvlb_weights"] = lvlb_weights
        return out

    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = extract_into_tensor(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = extract_into_tensor(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_0 from x_t and the predicted noise (Ho et al. eq. 4 solved for x_0)."""
        return (extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                - extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * noise)

    def _predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        """The noise that maps x_0 to x_t (inverse of `predict_start_from_noise`)."""
        return ((extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart)
                / extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape))

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. eqs. 6-7)."""
        posterior_mean = (extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
                          + extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        posterior_variance = extract_into_tensor(self.posterior_variance, t, x_t.shape)
        posterior_log_variance_clipped = extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return posterior_mean, posterior_variance, posterior_log_variance_clipped

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) (Ho et al. eq. 4); fresh `torch.randn_like` noise when none is given."""
        if noise is None:
            noise = torch.randn_like(x_start)
        return (extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
                + extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)

    def _prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x_0) || N(0, I)) per sample, in bits per dimension."""
        batch_size = x_start.shape[0]
        t = torch.full((batch_size,), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        qt_mean, _, qt_log_variance = self.q_mean_variance(x_start, t)
        kl_prior = normal_kl(mean1=qt_mean, logvar1=qt_log_variance, mean2=0.0, logvar2=0.0)
        return mean_flat(kl_prior) / np.log(2.0)
