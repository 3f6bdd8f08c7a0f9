"""The part of lucidrains' x-transformers (v0.x), as vendored by the original LDM code, that the configs build.

A token-embedding transformer encoder (Vaswani et al. 2017): learned absolute positions and pre-norm residual
layers of self-attention and feed-forward blocks. ``BERTEmbedder`` (the txt2img-1p4B text encoder) and
``TransformerEmbedder`` are a ``TransformerWrapper`` around an ``Encoder``; module names match the original
so that its checkpoints load with ``strict=True`` (``attn_layers.layers.<i>.0`` the norm, ``.1`` the
attention or feed-forward block). The vendored copy's other options (talking heads, memory key/values and
tokens, ReZero, scale/RMS norms, GRU gating, macaron/sandwich/PAR orderings, residual attention,
cross-attention, causal decoding) are built by no config and were left out.

When no attention weights are asked for, attention runs through
``torch.nn.functional.scaled_dot_product_attention``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import einsum, nn

from ldm.modules.attention import GEGLU, FeedForward, max_neg_value  # noqa: F401 (GEGLU re-exported)

DEFAULT_DIM_HEAD = 64
#: Prefixes that route ``Encoder`` options to its blocks: ``attn_dim_head`` -> ``Attention(dim_head=...)``.
ATTN_PREFIX = "attn_"
FF_PREFIX = "ff_"


def take_prefixed(prefix: str, d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The items of ``d`` whose key starts with ``prefix`` (prefix removed), and the other items."""
    with_prefix = {key[len(prefix):]: value for key, value in d.items() if key.startswith(prefix)}
    rest = {key: value for key, value in d.items() if not key.startswith(prefix)}
    return with_prefix, rest


class AbsolutePositionalEmbedding(nn.Module):
    """Learned absolute position embeddings."""

    def __init__(
        self,
        dim: int,  # embedding features
        max_seq_len: int,  # longest sequence
    ) -> None:
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        self.init_()

    def init_(self) -> None:
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = torch.arange(x.shape[1], device=x.device)
        return self.emb(n)[None, :, :]  # (1, N, dim)


class Attention(nn.Module):
    """Multi-head self-attention; returns ``(out, weights)``, the weights ``None`` unless asked for."""

    def __init__(
        self,
        dim: int,  # token features
        dim_head: int = DEFAULT_DIM_HEAD,  # features per head
        heads: int = 8,  # attention heads
        dropout: float = 0.0,  # dropout on the attention weights
    ) -> None:
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        inner_dim = dim_head * heads

        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_k = nn.Linear(dim, inner_dim, bias=False)
        self.to_v = nn.Linear(dim, inner_dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.dropout_p = dropout
        self.to_out = nn.Linear(inner_dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x``: (B, N, dim); ``mask``: (B, N) bool, True = keep.

        Without ``need_weights`` the fused kernel runs; with it the softmax weights (B, h, N, N) are computed
        explicitly and returned.
        """
        q, k, v = (rearrange(f(x), "b n (h d) -> b h n d", h=self.heads)
                   for f in (self.to_q, self.to_k, self.to_v))  # (B, h, N, d)

        keep = None
        if mask is not None:
            keep = rearrange(mask, "b i -> b () i ()") * rearrange(mask, "b j -> b () () j")  # (B, 1, N, N)

        if not need_weights:
            attn_mask = None
            if keep is not None:
                attn_mask = torch.zeros(keep.shape, dtype=q.dtype, device=x.device).masked_fill(~keep, max_neg_value(q))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale,
                                                 dropout_p=self.dropout_p if self.training else 0.0)  # (B, h, N, d)
            return self.to_out(rearrange(out, "b h n d -> b n (h d)")), None

        dots = einsum("b h i d, b h j d -> b h i j", q, k) * self.scale  # (B, h, N, N)
        if keep is not None:
            dots.masked_fill_(~keep, max_neg_value(dots))
        attn = dots.softmax(dim=-1)  # (B, h, N, N)
        out = einsum("b h i j, b h j d -> b h i d", self.dropout(attn), v)  # (B, h, N, d)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)")), attn


class Encoder(nn.Module):
    """A stack of pre-norm residual layers, self-attention then feed-forward, ``depth`` times.

    Options prefixed ``attn_`` go to every ``Attention``, ``ff_`` to every ``FeedForward``.
    """

    def __init__(
        self,
        dim: int,  # token features
        depth: int,  # number of blocks (each: self-attention + feed-forward)
        heads: int = 8,  # attention heads
        **kwargs: Any,  # attn_* and ff_* options
    ) -> None:
        super().__init__()
        ff_kwargs, kwargs = take_prefixed(FF_PREFIX, kwargs)
        attn_kwargs, kwargs = take_prefixed(ATTN_PREFIX, kwargs)
        if kwargs:
            raise TypeError(f"Encoder got unexpected options {sorted(kwargs)}; it takes dim, depth, heads, "
                            f"attention options with the prefix {ATTN_PREFIX!r} and feed-forward options with "
                            f"the prefix {FF_PREFIX!r} (the vendored copy's other options are not supported)")
        self.dim = dim
        self.depth = depth
        self.layers = nn.ModuleList([])
        for _ in range(depth):
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), Attention(dim, heads=heads, **attn_kwargs)]))
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), FeedForward(dim, **ff_kwargs)]))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_attn: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``x``: (B, N, dim); ``mask``: (B, N) bool, True = keep. Returns (B, N, dim), with the attention
        weights of every layer when ``return_attn``."""
        attn_maps = []
        for norm, block in self.layers:
            if isinstance(block, Attention):
                out, attn = block(norm(x), mask=mask, need_weights=return_attn)
                attn_maps.append(attn)
            else:
                out = block(norm(x))
            x = out + x  # (B, N, dim)
        return (x, attn_maps) if return_attn else x


class TransformerWrapper(nn.Module):
    """Token and position embeddings, an ``Encoder``, a final norm and the logits layer."""

    def __init__(
        self,
        *,
        num_tokens: int,  # vocabulary size
        max_seq_len: int,  # longest sequence (size of the position table)
        attn_layers: Encoder,  # the layer stack
        emb_dropout: float = 0.0,  # dropout on the embeddings
    ) -> None:
        super().__init__()
        if not isinstance(attn_layers, Encoder):
            raise TypeError(f"attn_layers must be an Encoder; got {type(attn_layers).__name__}")
        dim = attn_layers.dim
        self.max_seq_len = max_seq_len
        self.num_tokens = num_tokens

        self.token_emb = nn.Embedding(num_tokens, dim)
        self.pos_emb = AbsolutePositionalEmbedding(dim, max_seq_len)
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.attn_layers = attn_layers
        self.norm = nn.LayerNorm(dim)
        self.init_()
        self.to_logits = nn.Linear(dim, num_tokens)

    def init_(self) -> None:
        nn.init.normal_(self.token_emb.weight, std=0.02)

    def forward(
        self,
        x: torch.Tensor,
        return_embeddings: bool = False,
        mask: torch.Tensor | None = None,
        return_attn: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``x``: (B, N) token ids; ``mask``: (B, N) bool, True = keep. Returns (B, N, dim) embeddings or
        (B, N, num_tokens) logits, with the attention weights of every layer when ``return_attn``."""
        if x.shape[1] > self.max_seq_len:
            raise ValueError(f"sequence length {x.shape[1]} exceeds max_seq_len {self.max_seq_len}")
        x = self.token_emb(x)  # (B, N, dim)
        x = self.emb_dropout(x + self.pos_emb(x))
        if return_attn:
            x, attn_maps = self.attn_layers(x, mask=mask, return_attn=True)
        else:
            x = self.attn_layers(x, mask=mask)
        x = self.norm(x)  # (B, N, dim)
        out = x if return_embeddings else self.to_logits(x)
        return (out, attn_maps) if return_attn else out
