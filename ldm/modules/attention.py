"""Attention layers of the latent diffusion U-Net.

``SpatialTransformer`` is the cross-attention block of Rombach et al. 2022 (sec. 3.3): a feature map
is flattened to tokens, passed through transformer blocks (Vaswani et al. 2017) that attend to
themselves and to a conditioning sequence, and projected back. This is the original LDM version with
1x1 convolutions as ``proj_in``/``proj_out``. ``FeedForward`` may be gated (GEGLU, Shazeer 2020).
``LinearAttention`` is the linear-complexity attention of Katharopoulos et al. 2020 / Shen et al. 2021,
``SpatialSelfAttention`` plain single-head self-attention over pixels (the first stages'
``AttnBlock``).

Attention runs through ``torch.nn.functional.scaled_dot_product_attention``, which computes the same
softmax(q k^T / sqrt(d)) v as the original's einsums within float32 rounding. In the U-Net's blocks queries,
keys and values are handed to it as 4-D (batch, heads, tokens, features) views whose last dimension is
contiguous, the layout the fused kernels take (FlashAttention-style blocked softmax on the CPU, Dao et al.
2022; flash or memory-efficient kernels on CUDA): they never build the full tokens x tokens attention matrix,
which keeps memory linear in the number of tokens at high resolution, and they avoid the slower math fallback.

The spatial transformer works on the token view ``(B, H*W, C)`` of a feature map. When the U-Net runs in the
channels-last memory format that view costs nothing, and the 1x1 convolutions that project into and out of
the token space are applied as the equivalent matrix products on it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ldm.modules.diffusionmodules.util import checkpoint
from ldm.modules.fastpaths import Linear, dense
from ldm.util import default, exists

#: Epsilon of the plain GroupNorm used around the spatial transformer (differs from the U-Net's 1e-5).
NORMALIZE_EPS = 1e-6
NORMALIZE_GROUPS = 32


def max_neg_value(t: torch.Tensor) -> float:
    """The most negative finite value of the dtype of ``t``."""
    return -torch.finfo(t.dtype).max


def zero_module(module: nn.Module) -> nn.Module:
    """Zero the parameters of ``module`` in place and return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def Normalize(in_channels: int) -> nn.GroupNorm:  # noqa: N802 - the original's name
    """GroupNorm with 32 groups and eps 1e-6."""
    return nn.GroupNorm(num_groups=NORMALIZE_GROUPS, num_channels=in_channels, eps=NORMALIZE_EPS, affine=True)


def tokens_of(x: torch.Tensor) -> torch.Tensor:
    """The ``(B, H*W, C)`` token view of a ``(B, C, H, W)`` feature map (a copy only when it is not channels-last)."""
    return x.flatten(2).transpose(1, 2)


def feature_map_of(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The ``(B, C, H, W)`` feature map of ``(B, H*W, C)`` tokens (a view: channels-last when tokens are contiguous)."""
    return tokens.transpose(1, 2).unflatten(2, (h, w))


def conv1x1_tokens(conv: nn.Conv2d | nn.Conv1d, tokens: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to ``(B, T, C_in)`` tokens as the matrix product it is: ``(B, T, C_out)``."""
    return dense(tokens, conv.weight.flatten(1), conv.bias)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
              attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v (Vaswani et al. 2017) for ``(B, heads, N, d)`` queries and ``(B, heads, M, d)`` keys.

    The inputs may be strided views; their last dimension is made contiguous when it is not, so that the fused
    kernels apply. ``scale`` defaults to ``d ** -0.5``; ``attn_mask`` is added to the logits (or, boolean,
    selects the keys to attend to). Returns ``(B, heads, N, d)``.
    """
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


class GEGLU(nn.Module):
    """Gated GELU unit (Shazeer 2020): ``a * gelu(b)`` with ``[a, b] = W x + c``."""

    def __init__(
        self,
        dim_in: int,  # input features
        dim_out: int,  # output features
    ) -> None:
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


#: Tokens per chunk of a feed-forward layer at inference (``torch.no_grad``). The hidden layer (8x the width
#: with GEGLU) is the largest activation of a transformer block at high resolution; tokens are independent
#: rows, so running them in chunks gives the same outputs (bit for bit with oneDNN/MKL here) with a peak of
#: one chunk's hidden layer instead of all of them.
FEED_FORWARD_CHUNK = 4096


class FeedForward(nn.Module):
    """Transformer MLP: Linear-GELU (or GEGLU), dropout, Linear."""

    def __init__(
        self,
        dim: int,  # input features
        dim_out: int | None = None,  # output features; None = dim
        mult: float = 4,  # hidden width as a multiple of dim
        glu: bool = False,  # gate the hidden layer (GEGLU) instead of a plain GELU
        dropout: float = 0.0,  # dropout on the hidden layer
    ) -> None:
        super().__init__()
        inner_dim = int(dim * mult)
        dim_out = default(dim_out, dim)
        project_in = GEGLU(dim, inner_dim) if glu else nn.Sequential(Linear(dim, inner_dim), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), Linear(inner_dim, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.numel() // x.shape[-1] <= FEED_FORWARD_CHUNK:
            return self.net(x)
        rows = x.reshape(-1, x.shape[-1])  # (tokens, dim)
        return torch.cat([self.net(chunk) for chunk in rows.split(FEED_FORWARD_CHUNK)]).view(*x.shape[:-1], -1)


class LinearAttention(nn.Module):
    """Linear attention over pixels: keys softmax-normalized over positions, context = k v^T."""

    def __init__(
        self,
        dim: int,  # channels of the feature map
        heads: int = 4,  # attention heads
        dim_head: int = 32,  # channels per head
    ) -> None:
        super().__init__()
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.to_qkv(x)  # (B, 3 * heads * d, H, W)
        q, k, v = rearrange(qkv, "b (qkv heads c) h w -> qkv b heads c (h w)", heads=self.heads, qkv=3)
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)  # (B, heads, d, d)
        out = torch.einsum("bhde,bhdn->bhen", context, q)  # (B, heads, d, HW)
        out = rearrange(out, "b heads c (h w) -> b (heads c) h w", heads=self.heads, h=h, w=w)
        return self.to_out(out)


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(
        self,
        in_channels: int,  # channels of the feature map
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        h_ = self.norm(x)  # (B, C, H, W)
        q, k, v = (rearrange(conv(h_), "b c h w -> b 1 (h w) c") for conv in (self.q, self.k, self.v))  # (B, 1, HW, C)
        # q, k, v go to the kernel as strided views, not through `attention`: this is the first stages' AttnBlock,
        # whose outputs are kept to the bit (contiguous views change the last bits, about 2e-7 here).
        h_ = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C), softmax(q k^T / sqrt(C)) v
        return x + self.proj_out(rearrange(h_, "b 1 (h w) c -> b c h w", h=h, w=w))


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` to ``context`` (to itself when no context is given)."""

    def __init__(
        self,
        query_dim: int,  # features of the queries x
        context_dim: int | None = None,  # features of the context; None = query_dim (self-attention)
        heads: int = 8,  # attention heads
        dim_head: int = 64,  # features per head
        dropout: float = 0.0,  # dropout after the output projection
    ) -> None:
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = default(context_dim, query_dim)
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.to_q = Linear(query_dim, inner_dim, bias=False)
        self.to_k = Linear(context_dim, inner_dim, bias=False)
        self.to_v = Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: (B, N, query_dim); ``context``: (B, M, context_dim); ``mask``: (B, M...) bool, True = attend."""
        h = self.heads
        context = default(context, x)
        q = self.to_q(x).unflatten(-1, (h, -1)).transpose(1, 2)  # (B, h, N, d), a view
        k = self.to_k(context).unflatten(-1, (h, -1)).transpose(1, 2)  # (B, h, M, d)
        v = self.to_v(context).unflatten(-1, (h, -1)).transpose(1, 2)  # (B, h, M, d)
        attn_mask = None
        if exists(mask):
            mask = rearrange(mask, "b ... -> b 1 1 (...)").bool()  # (B, 1, 1, M)
            # an additive mask with the original's fill value: the same softmax where a row masks every key
            attn_mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
            attn_mask = attn_mask.masked_fill(~mask, max_neg_value(q))
        out = attention(q, k, v, scale=self.scale, attn_mask=attn_mask)  # (B, h, N, d)
        out = out.transpose(1, 2).flatten(2)  # (B, N, h * d)
        return self.to_out(out)


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention to the context, gated feed-forward."""

    def __init__(
        self,
        dim: int,  # token features
        n_heads: int,  # attention heads
        d_head: int,  # features per head
        dropout: float = 0.0,  # dropout in attention outputs and the feed-forward
        context_dim: int | None = None,  # features of the cross-attention context; None = self-attention
        gated_ff: bool = True,  # GEGLU feed-forward
        checkpoint: bool = True,  # recompute activations in the backward pass (gradient checkpointing)
    ) -> None:
        super().__init__()
        self.attn1 = CrossAttention(query_dim=dim, heads=n_heads, dim_head=d_head, dropout=dropout)  # self-attention
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = CrossAttention(query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head,
                                    dropout=dropout)  # self-attention too when context is None
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.checkpoint = checkpoint

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return checkpoint(self._forward, (x, context), self.parameters(), self.checkpoint and self.training)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x  # (B, N, dim)
        x = self.attn2(self.norm2(x), context=context) + x  # (B, N, dim)
        x = self.ff(self.norm3(x)) + x  # (B, N, dim)
        return x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map (Rombach et al. 2022, sec. 3.3).

    Normalize, project to ``n_heads * d_head`` channels with a 1x1 convolution, flatten to tokens,
    apply ``depth`` transformer blocks, reshape and project back (zero-initialized), add the input.
    """

    def __init__(
        self,
        in_channels: int,  # channels of the feature map
        n_heads: int,  # attention heads
        d_head: int,  # features per head
        depth: int = 1,  # number of transformer blocks
        dropout: float = 0.0,  # dropout inside the blocks
        context_dim: int | None = None,  # features of the cross-attention context; None = self-attention
        use_checkpoint: bool = True,  # gradient checkpointing of the blocks (the original always did it)
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        inner_dim = n_heads * d_head
        self.norm = Normalize(in_channels)
        self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim,
                                  checkpoint=use_checkpoint)
            for _ in range(depth)
        ])
        self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1, stride=1, padding=0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        x_in = x
        x = conv1x1_tokens(self.proj_in, tokens_of(self.norm(x)))  # (B, HW, inner)
        for block in self.transformer_blocks:
            x = block(x, context=context)  # (B, HW, inner)
        x = conv1x1_tokens(self.proj_out, x)  # (B, HW, C)
        return feature_map_of(x, h, w) + x_in  # (B, C, H, W)
