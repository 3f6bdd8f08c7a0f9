"""The conditioning stage of latent diffusion and classifier-free-guidance training.

Rombach et al., CVPR 2022, sec. 3.3: a domain-specific encoder tau_theta (class embedder, BERT, a
second autoencoder, ...) turns the raw conditioning into what the denoiser consumes. "Classifier-Free
Diffusion Guidance" (Ho & Salimans, 2021) trains the same network unconditionally as well, by replacing
the conditioning with a null input at a fixed rate (``ucg_rate``): an unconditional class index for class
labels, the empty caption ``""`` for text. Sampling then mixes both predictions (see the samplers'
``unconditional_guidance_scale``).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch

from ldm.models.diffusion.ddpm_module import disabled_train
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import FIRST_STAGE_SENTINEL, UNCONDITIONAL_SENTINEL, instantiate_from_config

logger = logging.getLogger(__name__)

#: The null caption used for classifier-free guidance with text conditioning.
UNCONDITIONAL_CAPTION = ""


class ConditioningMixin:
    """Builds ``self.cond_stage_model`` and encodes conditioning; expects ``cond_stage_trainable``,
    ``cond_stage_forward``, ``cond_stage_key``, ``ucg_rate`` and ``ucg_class`` to be set."""

    def instantiate_cond_stage(self, config: Mapping[str, Any] | str) -> None:
        """Build the conditioning encoder; frozen (eval, no gradients) unless ``cond_stage_trainable``."""
        if self.cond_stage_trainable:
            if config in (FIRST_STAGE_SENTINEL, UNCONDITIONAL_SENTINEL):
                raise ValueError(f"cond_stage_config {config!r} cannot be combined with cond_stage_trainable=True; "
                                 f"give a {{target, params}} mapping or set cond_stage_trainable to False")
            self.cond_stage_model = instantiate_from_config(config, where="model.params.cond_stage_config")
            return
        if config == FIRST_STAGE_SENTINEL:
            logger.info("Using first stage also as cond stage.")
            self.cond_stage_model = self.first_stage_model
        elif config == UNCONDITIONAL_SENTINEL:
            logger.info("Training %s as an unconditional model.", self.__class__.__name__)
            self.cond_stage_model = None
        else:
            model = instantiate_from_config(config, where="model.params.cond_stage_config")
            self.cond_stage_model = model.eval()
            self.cond_stage_model.train = disabled_train.__get__(self.cond_stage_model)
            for param in self.cond_stage_model.parameters():
                param.requires_grad = False

    def get_learned_conditioning(self, c: Any) -> Any:
        """Encode raw conditioning with the cond stage (its ``encode``, ``cond_stage_forward`` or call)."""
        if self.cond_stage_model is None:
            raise ValueError(f"{self.__class__.__name__} is unconditional (cond_stage_config "
                             f"{UNCONDITIONAL_SENTINEL!r}); there is no conditioning to encode")
        if self.cond_stage_forward is not None:
            fn = getattr(self.cond_stage_model, self.cond_stage_forward, None)
            if not callable(fn):
                raise ValueError(f"cond_stage_forward {self.cond_stage_forward!r} is not a method of "
                                 f"{type(self.cond_stage_model).__name__}")
            return fn(c)
        encode = getattr(self.cond_stage_model, "encode", None)
        if callable(encode):
            c = encode(c)
            return c.mode() if isinstance(c, DiagonalGaussianDistribution) else c
        return self.cond_stage_model(c)

    # ------------------------------------------------------------------ classifier-free guidance
    def _embedder_key(self) -> str:
        """The batch key a class embedder reads its labels from."""
        return getattr(self.cond_stage_model, "key", None) or self.cond_stage_key

    def unconditional_class(self) -> int:
        """The class index standing for "no class": ``ucg_class``, else the embedder's last index."""
        if self.ucg_class is not None:
            return int(self.ucg_class)
        embedding = getattr(self.cond_stage_model, "embedding", None)
        if isinstance(embedding, torch.nn.Embedding):
            return embedding.num_embeddings - 1
        raise ValueError(f"ucg_class is needed for class-label conditioning with "
                         f"{type(self.cond_stage_model).__name__}; got None")

    def _null_like(self, xc: Any, keep: torch.Tensor) -> Any:
        """``xc`` with the entries where ``keep`` is False replaced by the null conditioning."""
        if isinstance(xc, Mapping):  # a batch read by a class embedder
            key = self._embedder_key()
            if key not in xc:
                raise ValueError(f"classifier-free guidance: the conditioning batch has no key {key!r}; "
                                 f"keys present: {sorted(xc)}")
            out = dict(xc)
            out[key] = self._null_like(xc[key], keep)
            return out
        if isinstance(xc, (list, tuple)) and all(isinstance(s, str) for s in xc):  # captions
            return type(xc)(s if k else UNCONDITIONAL_CAPTION for s, k in zip(xc, keep.tolist()))
        if isinstance(xc, torch.Tensor) and not xc.is_floating_point():  # class indices
            null = torch.full_like(xc, self.unconditional_class())
            mask = keep.to(xc.device).view(-1, *([1] * (xc.dim() - 1)))
            return torch.where(mask, xc, null)
        raise TypeError(f"classifier-free guidance (ucg_rate={self.ucg_rate}) supports class labels and captions; "
                        f"got conditioning of type {type(xc).__name__}")

    @staticmethod
    def _cond_batch_size(xc: Any, key: str) -> int:
        value = xc[key] if isinstance(xc, Mapping) else xc
        return len(value)

    def drop_conditioning(self, xc: Any) -> Any:
        """Replace each element of the raw conditioning by the null one with probability ``ucg_rate``."""
        if self.ucg_rate <= 0.0:
            return xc
        b = self._cond_batch_size(xc, self._embedder_key())
        keep = torch.rand(b) >= self.ucg_rate
        return self._null_like(xc, keep)

    @torch.no_grad()
    def get_unconditional_conditioning(self, batch_size: int, device: torch.device | None = None) -> Any:
        """The encoded null conditioning for a batch, in the form the samplers take for guidance."""
        device = device if device is not None else self.device
        if isinstance(getattr(self.cond_stage_model, "embedding", None), torch.nn.Embedding):
            labels = torch.full((batch_size,), self.unconditional_class(), device=device, dtype=torch.long)
            return self.get_learned_conditioning({self._embedder_key(): labels})
        return self.get_learned_conditioning([UNCONDITIONAL_CAPTION] * batch_size)
