"""The conditioning stage of latent diffusion and classifier-free-guidance training.

Rombach et al., CVPR 2022, sec. 3.3: a domain-specific encoder tau_theta (class embedder, BERT, a
second autoencoder, ...) turns the raw conditioning into what the denoiser consumes. "Classifier-Free
Diffusion Guidance" (Ho & Salimans, 2021) trains the same network unconditionally as well, by replacing
the conditioning with a null input at a fixed rate (``ucg_rate``): an unconditional class index for class
labels, the empty caption ``""`` for text. Sampling then mixes both predictions (see the samplers'
``unconditional_guidance_scale``). `LatentDiffusion`'s conditioning methods call these functions.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import torch

from ldm.models.diffusion.first_stage import freeze
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import FIRST_STAGE_SENTINEL, UNCONDITIONAL_SENTINEL, instantiate_from_config

logger = logging.getLogger(__name__)

#: The null caption used for classifier-free guidance with text conditioning.
UNCONDITIONAL_CAPTION = ""


def instantiate_cond_stage(config: Mapping[str, Any] | str, trainable: bool,
                           first_stage_model: torch.nn.Module) -> torch.nn.Module | None:
    """The conditioning encoder; frozen (eval, no gradients) unless ``trainable``. ``config`` may also be
    ``"__is_first_stage__"`` (the first stage itself) or ``"__is_unconditional__"`` (None)."""
    if trainable:
        if config in (FIRST_STAGE_SENTINEL, UNCONDITIONAL_SENTINEL):
            raise ValueError(f"cond_stage_config {config!r} cannot be combined with cond_stage_trainable=True; "
                             f"give a {{target, params}} mapping or set cond_stage_trainable to False")
        return instantiate_from_config(config, where="model.params.cond_stage_config")
    if config == FIRST_STAGE_SENTINEL:
        logger.info("Using first stage also as cond stage.")
        return first_stage_model
    if config == UNCONDITIONAL_SENTINEL:
        logger.info("Training as an unconditional model.")
        return None
    return freeze(instantiate_from_config(config, where="model.params.cond_stage_config"))


def encode_conditioning(cond_stage_model: torch.nn.Module | None, c: Any, cond_stage_forward: str | None = None) -> Any:
    """Encode raw conditioning with the cond stage: its method ``cond_stage_forward``, else its ``encode`` (the
    mode of a posterior), else its call."""
    if cond_stage_model is None:
        raise ValueError(f"the model is unconditional (cond_stage_config {UNCONDITIONAL_SENTINEL!r}); "
                         f"there is no conditioning to encode")
    if cond_stage_forward is not None:
        fn = getattr(cond_stage_model, cond_stage_forward, None)
        if not callable(fn):
            raise ValueError(f"cond_stage_forward {cond_stage_forward!r} is not a method of "
                             f"{type(cond_stage_model).__name__}")
        return fn(c)
    encode = getattr(cond_stage_model, "encode", None)
    if callable(encode):
        c = encode(c)
        return c.mode() if isinstance(c, DiagonalGaussianDistribution) else c
    return cond_stage_model(c)


# ------------------------------------------------------------------ classifier-free guidance
def embedder_key(cond_stage_model: torch.nn.Module | None, cond_stage_key: str | None) -> str | None:
    """The batch key a class embedder reads its labels from."""
    return getattr(cond_stage_model, "key", None) or cond_stage_key


def unconditional_class(cond_stage_model: torch.nn.Module | None, ucg_class: int | None) -> int:
    """The class index standing for "no class": ``ucg_class``, else the embedder's last index."""
    if ucg_class is not None:
        return int(ucg_class)
    embedding = getattr(cond_stage_model, "embedding", None)
    if isinstance(embedding, torch.nn.Embedding):
        return embedding.num_embeddings - 1
    raise ValueError(f"ucg_class is needed for class-label conditioning with "
                     f"{type(cond_stage_model).__name__}; got None")


def null_like(xc: Any, keep: torch.Tensor, key: str | None, null_class: Callable[[], int]) -> Any:
    """``xc`` with the entries where ``keep`` is False replaced by the null conditioning: the empty caption,
    or the class ``null_class()`` (under ``key`` when ``xc`` is a batch read by a class embedder)."""
    if isinstance(xc, Mapping):
        if key not in xc:
            raise ValueError(f"classifier-free guidance: the conditioning batch has no key {key!r}; "
                             f"keys present: {sorted(xc)}")
        return {**xc, key: null_like(xc[key], keep, key, null_class)}
    if isinstance(xc, (list, tuple)) and all(isinstance(s, str) for s in xc):  # captions
        return type(xc)(s if k else UNCONDITIONAL_CAPTION for s, k in zip(xc, keep.tolist()))
    if isinstance(xc, torch.Tensor) and not xc.is_floating_point():  # class indices
        null = torch.full_like(xc, null_class())
        mask = keep.to(xc.device).view(-1, *([1] * (xc.dim() - 1)))
        return torch.where(mask, xc, null)
    raise TypeError(f"classifier-free guidance supports class labels and captions; "
                    f"got conditioning of type {type(xc).__name__}")


def drop_conditioning(xc: Any, rate: float, key: str | None, null_class: Callable[[], int]) -> Any:
    """Replace each element of the raw conditioning by the null one with probability ``rate``."""
    if rate <= 0.0:
        return xc
    keep = torch.rand(len(xc[key] if isinstance(xc, Mapping) else xc)) >= rate
    return null_like(xc, keep, key, null_class)
