"""Latent distributions of the autoencoders.

``DiagonalGaussianDistribution`` is the posterior q(z|x) of the KL-regularized autoencoder (a VAE posterior,
Kingma & Welling 2014; Rombach et al. 2022, sec. 3.1 and appendix G): mean and log-variance stacked along the
channels. ``normal_kl`` is the KL divergence between two Gaussians (as in Ho et al. 2020's code).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

#: Clamp range of the log-variance, as in the original (keeps exp() finite).
LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


class AbstractDistribution:
    """A distribution that can be sampled and has a mode."""

    def sample(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement sample()")

    def mode(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement mode()")


class DiracDistribution(AbstractDistribution):
    """All mass on ``value``."""

    def __init__(
        self,
        value: torch.Tensor,  # the only value the distribution takes
    ) -> None:
        self.value = value

    def sample(self) -> torch.Tensor:
        return self.value

    def mode(self) -> torch.Tensor:
        return self.value


class DiagonalGaussianDistribution:
    """N(mean, diag(exp(logvar))) from ``parameters`` = (B, 2C, ...) holding mean then log-variance."""

    def __init__(
        self,
        parameters: torch.Tensor,  # (B, 2C, ...): mean and log-variance, concatenated along dim 1
        deterministic: bool = False,  # zero variance: sample() returns the mean, kl() and nll() are 0
    ) -> None:
        if parameters.shape[1] % 2:
            raise ValueError(f"parameters must hold mean and log-variance along dim 1 (an even size); "
                             f"got shape {tuple(parameters.shape)}")
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)  # (B, C, ...) each
        self.logvar = torch.clamp(self.logvar, LOGVAR_MIN, LOGVAR_MAX)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if self.deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self) -> torch.Tensor:
        """mean + std * eps; eps from the global CPU generator, so a seed gives the same sample on every device."""
        noise = torch.randn(self.mean.shape).to(device=self.parameters.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        """KL(self || other) summed over (C, H, W), per batch element; other = N(0, I) when None."""
        if self.deterministic:
            return torch.tensor([0.0], device=self.parameters.device)
        if other is None:
            return 0.5 * torch.sum(torch.pow(self.mean, 2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
        return 0.5 * torch.sum(
            torch.pow(self.mean - other.mean, 2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=[1, 2, 3],
        )

    def nll(self, sample: torch.Tensor, dims: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
        """Negative log-likelihood of ``sample``, summed over ``dims``."""
        if self.deterministic:
            return torch.tensor([0.0], device=self.parameters.device)
        logtwopi = np.log(2.0 * np.pi)
        return 0.5 * torch.sum(logtwopi + self.logvar + torch.pow(sample - self.mean, 2) / self.var, dim=list(dims))

    def mode(self) -> torch.Tensor:
        return self.mean


def normal_kl(mean1: Any, logvar1: Any, mean2: Any, logvar2: Any) -> torch.Tensor:
    """KL divergence between N(mean1, exp(logvar1)) and N(mean2, exp(logvar2)), elementwise.

    Scalars broadcast against the tensors; at least one argument must be a tensor.
    """
    tensor = next((obj for obj in (mean1, logvar1, mean2, logvar2) if isinstance(obj, torch.Tensor)), None)
    if tensor is None:
        raise TypeError("normal_kl needs at least one tensor argument; got only "
                        f"{', '.join(type(o).__name__ for o in (mean1, logvar1, mean2, logvar2))}")
    logvar1, logvar2 = [x if isinstance(x, torch.Tensor) else torch.tensor(x).to(tensor) for x in (logvar1, logvar2)]
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + ((mean1 - mean2) ** 2) * torch.exp(-logvar2))
