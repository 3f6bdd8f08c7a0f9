"""The subset of lucidrains' x-transformers (v0.x) that the original LDM code vendored.

A token-embedding transformer (Vaswani et al. 2017) with pre-norm residual layers, learned absolute
positions, and the options that vendored copy supported: scale/RMS norm (Nguyen & Salazar 2019;
Zhang & Sennrich 2019), ReZero (Bachlechner et al. 2020), GRU-gated residuals (Parisotto et al. 2019),
talking heads (Shazeer et al. 2020), top-k sparse attention (Zhao et al. 2019), memory key/values and
memory tokens (Burtsev et al. 2020), attention on attention (Huang et al. 2019), position-infused
attention (Press et al. 2020), macaron, sandwich and PAR layer orderings, residual attention
(He et al. 2020). ``BERTEmbedder`` (the txt2img-1p4B text encoder) is a ``TransformerWrapper`` around an
``Encoder``; module names match the original so that its checkpoints load with ``strict=True``
(``attn_layers.layers.<i>.0`` the norm, ``.1`` the attention or feed-forward block).

When no attention weights are asked for, attention runs through
``torch.nn.functional.scaled_dot_product_attention``.
"""
from __future__ import annotations

from collections import namedtuple
from functools import partial
from inspect import isfunction
from typing import Any, Callable

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import einsum, nn

from ldm.modules.attention import GEGLU, FeedForward  # noqa: F401 (the same blocks, re-exported)

DEFAULT_DIM_HEAD = 64
LAYER_TYPES = ("a", "c", "f")

Intermediates = namedtuple("Intermediates", ["pre_softmax_attn", "post_softmax_attn"])
LayerIntermediates = namedtuple("LayerIntermediates", ["hiddens", "attn_intermediates"])


# helpers

def exists(val: Any) -> bool:
    return val is not None


def default(val: Any, d: Any) -> Any:
    """``val`` if it is not None, else ``d`` (called first when it is a function)."""
    if exists(val):
        return val
    return d() if isfunction(d) else d


def always(val: Any) -> Callable[..., Any]:
    """A function that ignores its arguments and returns ``val``."""
    def inner(*args: Any, **kwargs: Any) -> Any:
        return val
    return inner


def not_equals(val: Any) -> Callable[[Any], bool]:
    def inner(x: Any) -> bool:
        return x != val
    return inner


def equals(val: Any) -> Callable[[Any], bool]:
    def inner(x: Any) -> bool:
        return x == val
    return inner


def max_neg_value(tensor: torch.Tensor) -> float:
    """The most negative finite value of the dtype of ``tensor``."""
    return -torch.finfo(tensor.dtype).max


def group_dict_by_key(cond: Callable[[str], bool], d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``d`` into the items whose key satisfies ``cond`` and the rest."""
    return_val: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    for key in d.keys():
        match = bool(cond(key))
        return_val[int(not match)][key] = d[key]
    return return_val


def string_begins_with(prefix: str, s: str) -> bool:
    return s.startswith(prefix)


def group_by_key_prefix(prefix: str, d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return group_dict_by_key(partial(string_begins_with, prefix), d)


def groupby_prefix_and_trim(prefix: str, d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The items of ``d`` whose key starts with ``prefix`` (prefix removed), and the other items."""
    kwargs_with_prefix, kwargs = group_dict_by_key(partial(string_begins_with, prefix), d)
    kwargs_without_prefix = {key[len(prefix):]: value for key, value in kwargs_with_prefix.items()}
    return kwargs_without_prefix, kwargs


# positional embeddings

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


class FixedPositionalEmbedding(nn.Module):
    """Sinusoidal position embeddings (Vaswani et al. 2017): sines then cosines."""

    def __init__(
        self,
        dim: int,  # embedding features
    ) -> None:
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, x: torch.Tensor, seq_dim: int = 1, offset: int = 0) -> torch.Tensor:
        t = torch.arange(x.shape[seq_dim], device=x.device).type_as(self.inv_freq) + offset
        sinusoid_inp = torch.einsum("i , j -> i j", t, self.inv_freq)
        emb = torch.cat((sinusoid_inp.sin(), sinusoid_inp.cos()), dim=-1)
        return emb[None, :, :]  # (1, N, dim)


# classes

class Scale(nn.Module):
    """Multiply the output of ``fn`` by a constant."""

    def __init__(
        self,
        value: float,  # the factor
        fn: nn.Module,  # the wrapped module
    ) -> None:
        super().__init__()
        self.value = value
        self.fn = fn

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.fn(x, **kwargs) * self.value


class Rezero(nn.Module):
    """ReZero (Bachlechner et al. 2020): scale the branch by a learned scalar initialized at zero."""

    def __init__(
        self,
        fn: nn.Module,  # the wrapped branch
    ) -> None:
        super().__init__()
        self.fn = fn
        self.g = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, **kwargs: Any) -> Any:
        out = self.fn(x, **kwargs)
        if isinstance(out, tuple):
            return (out[0] * self.g, *out[1:])
        return out * self.g


class _L2Norm(nn.Module):
    """``x / max(|x| / sqrt(dim), eps) * g``: the forward of ScaleNorm and RMSNorm, whose gains differ in shape."""

    def __init__(
        self,
        dim: int,  # features
        eps: float,  # lower bound of the norm
        gain_features: int,  # entries of the learned gain g
    ) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(gain_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class ScaleNorm(_L2Norm):
    """ScaleNorm (Nguyen & Salazar 2019): divide by the L2 norm, times a learned scalar."""

    def __init__(
        self,
        dim: int,  # features
        eps: float = 1e-5,  # lower bound of the norm
    ) -> None:
        super().__init__(dim, eps, gain_features=1)


class RMSNorm(_L2Norm):
    """RMSNorm (Zhang & Sennrich 2019) with a learned gain per feature."""

    def __init__(
        self,
        dim: int,  # features
        eps: float = 1e-8,  # lower bound of the norm
    ) -> None:
        super().__init__(dim, eps, gain_features=dim)


class Residual(nn.Module):
    """Plain residual connection: ``x + residual``."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return x + residual


class GRUGating(nn.Module):
    """Residual connection through a GRU cell (Parisotto et al. 2019)."""

    def __init__(
        self,
        dim: int,  # features
    ) -> None:
        super().__init__()
        self.gru = nn.GRUCell(dim, dim)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        gated_output = self.gru(
            rearrange(x, "b n d -> (b n) d"),
            rearrange(residual, "b n d -> (b n) d"),
        )
        return gated_output.reshape_as(x)


# attention

class Attention(nn.Module):
    """Multi-head (self- or cross-) attention; returns ``(out, Intermediates)``."""

    def __init__(
        self,
        dim: int,  # token features
        dim_head: int = DEFAULT_DIM_HEAD,  # features per head
        heads: int = 8,  # attention heads
        causal: bool = False,  # mask out future positions
        mask: torch.Tensor | None = None,  # unused; kept for the original's signature
        talking_heads: bool = False,  # mix heads before and after the softmax (Shazeer et al. 2020)
        sparse_topk: int | None = None,  # keep only the top-k logits per query
        use_entmax15: bool = False,  # entmax15 instead of softmax (needs the entmax package; unsupported here)
        num_mem_kv: int = 0,  # learned memory key/values prepended to every sequence
        dropout: float = 0.0,  # dropout on the attention weights
        on_attn: bool = False,  # attention on attention: a GLU output projection (Huang et al. 2019)
    ) -> None:
        super().__init__()
        if use_entmax15:
            raise ValueError("use_entmax15=True needs the entmax package, which this project does not ship; "
                             "use the default softmax")
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.causal = causal
        self.mask = mask
        inner_dim = dim_head * heads

        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_k = nn.Linear(dim, inner_dim, bias=False)
        self.to_v = nn.Linear(dim, inner_dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.dropout_p = dropout

        self.talking_heads = talking_heads
        if talking_heads:
            self.pre_softmax_proj = nn.Parameter(torch.randn(heads, heads))
            self.post_softmax_proj = nn.Parameter(torch.randn(heads, heads))

        self.sparse_topk = sparse_topk
        self.attn_fn = F.softmax

        self.num_mem_kv = num_mem_kv
        if num_mem_kv > 0:
            self.mem_k = nn.Parameter(torch.randn(heads, num_mem_kv, dim_head))
            self.mem_v = nn.Parameter(torch.randn(heads, num_mem_kv, dim_head))

        self.attn_on_attn = on_attn
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim * 2), nn.GLU()) if on_attn else nn.Linear(inner_dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        rel_pos: Callable[[torch.Tensor], torch.Tensor] | None = None,
        sinusoidal_emb: FixedPositionalEmbedding | None = None,
        prev_attn: torch.Tensor | None = None,
        mem: torch.Tensor | None = None,
        need_weights: bool = True,
    ) -> tuple[torch.Tensor, Intermediates]:
        """``x``: (B, N, dim); ``context``: (B, M, dim); masks: (B, N) / (B, M) bool, True = keep.

        With ``need_weights`` False and no option that edits the logits, the fused kernel runs and the
        returned intermediates are ``None``.
        """
        b, n, _ = x.shape
        h, talking_heads, device = self.heads, self.talking_heads, x.device
        kv_input = default(context, x)

        q_input = x
        k_input = kv_input
        v_input = kv_input

        if exists(mem):
            k_input = torch.cat((mem, k_input), dim=-2)
            v_input = torch.cat((mem, v_input), dim=-2)

        if exists(sinusoidal_emb):
            # in shortformer, the query would start at a position offset depending on the past cached memory
            offset = k_input.shape[-2] - q_input.shape[-2]
            q_input = q_input + sinusoidal_emb(q_input, offset=offset)
            k_input = k_input + sinusoidal_emb(k_input)

        q = self.to_q(q_input)
        k = self.to_k(k_input)
        v = self.to_v(v_input)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=h) for t in (q, k, v))  # (B, h, N|M, d)

        input_mask = None
        if any(map(exists, (mask, context_mask))):
            q_mask = default(mask, lambda: torch.ones((b, n), device=device).bool())
            k_mask = q_mask if not exists(context) else context_mask
            k_mask = default(k_mask, lambda: torch.ones((b, k.shape[-2]), device=device).bool())
            q_mask = rearrange(q_mask, "b i -> b () i ()")
            k_mask = rearrange(k_mask, "b j -> b () () j")
            input_mask = q_mask * k_mask  # (B, 1, N, M)

        if self.num_mem_kv > 0:
            mem_k, mem_v = (repeat(t, "h n d -> b h n d", b=b) for t in (self.mem_k, self.mem_v))
            k = torch.cat((mem_k, k), dim=-2)
            v = torch.cat((mem_v, v), dim=-2)
            if exists(input_mask):
                input_mask = F.pad(input_mask, (self.num_mem_kv, 0), value=True)

        fused = (not need_weights and not talking_heads and not exists(rel_pos) and not exists(prev_attn)
                 and not exists(self.sparse_topk))
        if fused:
            keep = input_mask
            if self.causal:
                allowed = ~self._causal_mask(q.shape[-2], k.shape[-2], device)
                keep = allowed if keep is None else keep & allowed
            attn_mask = None
            if exists(keep):
                attn_mask = torch.zeros(keep.shape, dtype=q.dtype, device=device).masked_fill(~keep, max_neg_value(q))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale,
                                                 dropout_p=self.dropout_p if self.training else 0.0)  # (B, h, N, d)
            out = rearrange(out, "b h n d -> b n (h d)")
            return self.to_out(out), Intermediates(pre_softmax_attn=None, post_softmax_attn=None)

        dots = einsum("b h i d, b h j d -> b h i j", q, k) * self.scale  # (B, h, N, M)
        mask_value = max_neg_value(dots)

        if exists(prev_attn):
            dots = dots + prev_attn

        pre_softmax_attn = dots

        if talking_heads:
            dots = einsum("b h i j, h k -> b k i j", dots, self.pre_softmax_proj).contiguous()

        if exists(rel_pos):
            dots = rel_pos(dots)

        # in place, as in the original: without talking heads the returned pre-softmax logits carry the masks
        if exists(input_mask):
            dots.masked_fill_(~input_mask, mask_value)

        if self.causal:
            i, j = dots.shape[-2:]
            dots.masked_fill_(self._causal_mask(i, j, device), mask_value)

        if exists(self.sparse_topk) and self.sparse_topk < dots.shape[-1]:
            top, _ = dots.topk(self.sparse_topk, dim=-1)
            vk = top[..., -1].unsqueeze(-1).expand_as(dots)
            dots.masked_fill_(dots < vk, mask_value)

        attn = self.attn_fn(dots, dim=-1)  # (B, h, N, M)
        post_softmax_attn = attn

        attn = self.dropout(attn)

        if talking_heads:
            attn = einsum("b h i j, h k -> b k i j", attn, self.post_softmax_proj).contiguous()

        out = einsum("b h i j, b h j d -> b h i d", attn, v)  # (B, h, N, d)
        out = rearrange(out, "b h n d -> b n (h d)")

        intermediates = Intermediates(pre_softmax_attn=pre_softmax_attn, post_softmax_attn=post_softmax_attn)
        return self.to_out(out), intermediates

    @staticmethod
    def _causal_mask(i: int, j: int, device: torch.device) -> torch.Tensor:
        """(1, 1, i, j) bool, True where query position may not see the key (keys may hold j - i past entries)."""
        r = torch.arange(i, device=device)
        mask = rearrange(r, "i -> () () i ()") < rearrange(r, "j -> () () () j")
        return F.pad(mask, (j - i, 0), value=False)


class AttentionLayers(nn.Module):
    """A stack of (norm, block, residual) layers: self-attention 'a', cross-attention 'c', feed-forward 'f'.

    Options prefixed ``attn_`` go to every ``Attention``, ``ff_`` to every ``FeedForward``.
    """

    def __init__(
        self,
        dim: int,  # token features
        depth: int,  # number of blocks (each: attention [+ cross-attention] + feed-forward)
        heads: int = 8,  # attention heads
        causal: bool = False,  # causal self-attention
        cross_attend: bool = False,  # add a cross-attention layer to each block
        only_cross: bool = False,  # cross-attention only, no self-attention
        use_scalenorm: bool = False,  # ScaleNorm instead of LayerNorm
        use_rmsnorm: bool = False,  # RMSNorm instead of LayerNorm
        use_rezero: bool = False,  # ReZero branches and no norms
        rel_pos_num_buckets: int = 32,  # kept for the original's signature (relative positions were not vendored)
        rel_pos_max_distance: int = 128,  # kept for the original's signature
        position_infused_attn: bool = False,  # sinusoidal positions added to q and k in every layer
        custom_layers: tuple[str, ...] | None = None,  # explicit layer types, e.g. ('a', 'f', 'a', 'f')
        sandwich_coef: int | None = None,  # sandwich transformer ordering (Press et al. 2020)
        par_ratio: int | None = None,  # PAR transformer ordering (Mandava et al. 2020)
        residual_attn: bool = False,  # add the previous self-attention logits (RealFormer, He et al. 2020)
        cross_residual_attn: bool = False,  # the same for cross-attention
        macaron: bool = False,  # a half-step feed-forward before each block (Lu et al. 2019)
        pre_norm: bool = True,  # normalize before each branch (False: after)
        gate_residual: bool = False,  # GRU-gated residual connections
        **kwargs: Any,  # attn_* and ff_* options
    ) -> None:
        super().__init__()
        ff_kwargs, kwargs = groupby_prefix_and_trim("ff_", kwargs)
        attn_kwargs, kwargs = groupby_prefix_and_trim("attn_", kwargs)
        if kwargs:
            raise TypeError(f"AttentionLayers got unexpected options {sorted(kwargs)}; "
                            f"attention options take the prefix 'attn_', feed-forward options 'ff_'")
        if rel_pos_num_buckets > rel_pos_max_distance:
            raise ValueError(f"rel_pos_num_buckets ({rel_pos_num_buckets}) must not exceed "
                             f"rel_pos_max_distance ({rel_pos_max_distance})")

        self.dim = dim
        self.depth = depth
        self.layers = nn.ModuleList([])

        self.has_pos_emb = position_infused_attn
        self.pia_pos_emb = FixedPositionalEmbedding(dim) if position_infused_attn else None
        self.rotary_pos_emb = always(None)
        self.rel_pos = None

        self.pre_norm = pre_norm
        self.residual_attn = residual_attn
        self.cross_residual_attn = cross_residual_attn

        norm_class = ScaleNorm if use_scalenorm else nn.LayerNorm
        norm_class = RMSNorm if use_rmsnorm else norm_class
        norm_fn: Callable[[], nn.Module] = partial(norm_class, dim)
        norm_fn = nn.Identity if use_rezero else norm_fn
        branch_fn = Rezero if use_rezero else None

        if cross_attend and not only_cross:
            default_block: tuple[str, ...] = ("a", "c", "f")
        elif cross_attend and only_cross:
            default_block = ("c", "f")
        else:
            default_block = ("a", "f")

        if macaron:
            default_block = ("f",) + default_block

        if exists(custom_layers):
            layer_types = tuple(custom_layers)
        elif exists(par_ratio):
            par_depth = depth * len(default_block)
            if not 1 < par_ratio <= par_depth:
                raise ValueError(f"par_ratio must be in (1, {par_depth}]; got {par_ratio}")
            default_block = tuple(filter(not_equals("f"), default_block))
            par_attn = par_depth // par_ratio
            depth_cut = par_depth * 2 // 3  # 2/3 attention layer cutoff suggested by the PAR paper
            par_width = (depth_cut + depth_cut // par_attn) // par_attn
            if len(default_block) > par_width:
                raise ValueError(f"par_ratio={par_ratio} leaves blocks of width {par_width}, smaller than "
                                 f"the default block {default_block}")
            par_block = default_block + ("f",) * (par_width - len(default_block))
            par_head = par_block * par_attn
            layer_types = par_head + ("f",) * (par_depth - len(par_head))
        elif exists(sandwich_coef):
            if not 0 < sandwich_coef <= depth:
                raise ValueError(f"sandwich_coef must be in [1, depth={depth}]; got {sandwich_coef}")
            layer_types = ("a",) * sandwich_coef + default_block * (depth - sandwich_coef) + ("f",) * sandwich_coef
        else:
            layer_types = default_block * depth

        self.layer_types = layer_types
        self.num_attn_layers = len(list(filter(equals("a"), layer_types)))

        for layer_type in self.layer_types:
            if layer_type == "a":
                layer: nn.Module = Attention(dim, heads=heads, causal=causal, **attn_kwargs)
            elif layer_type == "c":
                layer = Attention(dim, heads=heads, **attn_kwargs)
            elif layer_type == "f":
                layer = FeedForward(dim, **ff_kwargs)
                layer = layer if not macaron else Scale(0.5, layer)
            else:
                raise ValueError(f"layer types must be among {LAYER_TYPES}; got {layer_type!r}")

            if isinstance(layer, Attention) and exists(branch_fn):
                layer = branch_fn(layer)

            residual_fn = GRUGating(dim) if gate_residual else Residual()

            self.layers.append(nn.ModuleList([norm_fn(), layer, residual_fn]))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        mems: list[torch.Tensor] | None = None,
        return_hiddens: bool = False,
        return_attn: bool = False,
    ) -> Any:
        """``x``: (B, N, dim). Returns (B, N, dim), with ``LayerIntermediates`` when ``return_hiddens``.

        ``return_attn`` makes every attention layer keep its weights in the intermediates.
        """
        hiddens = []
        intermediates = []
        prev_attn = None
        prev_cross_attn = None

        mems = mems.copy() if exists(mems) else [None] * self.num_attn_layers

        for ind, (layer_type, (norm, block, residual_fn)) in enumerate(zip(self.layer_types, self.layers)):
            is_last = ind == (len(self.layers) - 1)

            if layer_type == "a":
                hiddens.append(x)
                layer_mem = mems.pop(0)

            residual = x

            if self.pre_norm:
                x = norm(x)

            if layer_type == "a":
                out, inter = block(x, mask=mask, sinusoidal_emb=self.pia_pos_emb, rel_pos=self.rel_pos,
                                   prev_attn=prev_attn, mem=layer_mem,
                                   need_weights=return_attn or self.residual_attn)
            elif layer_type == "c":
                out, inter = block(x, context=context, mask=mask, context_mask=context_mask,
                                   prev_attn=prev_cross_attn, need_weights=return_attn or self.cross_residual_attn)
            else:
                out = block(x)

            x = residual_fn(out, residual)

            if layer_type in ("a", "c"):
                intermediates.append(inter)

            if layer_type == "a" and self.residual_attn:
                prev_attn = inter.pre_softmax_attn
            elif layer_type == "c" and self.cross_residual_attn:
                prev_cross_attn = inter.pre_softmax_attn

            if not self.pre_norm and not is_last:
                x = norm(x)

        if return_hiddens:
            return x, LayerIntermediates(hiddens=hiddens, attn_intermediates=intermediates)
        return x


class Encoder(AttentionLayers):
    """Non-causal ``AttentionLayers``."""

    def __init__(self, **kwargs: Any) -> None:
        if "causal" in kwargs:
            raise ValueError("an Encoder is never causal; do not pass causal")
        super().__init__(causal=False, **kwargs)


class TransformerWrapper(nn.Module):
    """Token and position embeddings, an ``AttentionLayers`` stack, a final norm and the logits layer."""

    def __init__(
        self,
        *,
        num_tokens: int,  # vocabulary size
        max_seq_len: int,  # longest sequence (size of the position table)
        attn_layers: AttentionLayers,  # the layer stack
        emb_dim: int | None = None,  # token embedding features; None = attn_layers.dim
        max_mem_len: float = 0.0,  # memories kept between calls (return_mems)
        emb_dropout: float = 0.0,  # dropout on the embeddings
        num_memory_tokens: int | None = None,  # learned tokens prepended to every sequence
        tie_embedding: bool = False,  # logits by the transposed token embedding instead of a Linear
        use_pos_emb: bool = True,  # learned absolute positions (unless the layers bring their own)
    ) -> None:
        super().__init__()
        if not isinstance(attn_layers, AttentionLayers):
            raise TypeError(f"attn_layers must be an AttentionLayers (e.g. Encoder); got {type(attn_layers).__name__}")

        dim = attn_layers.dim
        emb_dim = default(emb_dim, dim)

        self.max_seq_len = max_seq_len
        self.max_mem_len = max_mem_len
        self.num_tokens = num_tokens

        self.token_emb = nn.Embedding(num_tokens, emb_dim)
        self.pos_emb = (AbsolutePositionalEmbedding(emb_dim, max_seq_len)
                        if (use_pos_emb and not attn_layers.has_pos_emb) else always(0))
        self.emb_dropout = nn.Dropout(emb_dropout)

        self.project_emb = nn.Linear(emb_dim, dim) if emb_dim != dim else nn.Identity()
        self.attn_layers = attn_layers
        self.norm = nn.LayerNorm(dim)

        self.init_()

        self.tie_embedding = tie_embedding
        if not tie_embedding:
            self.to_logits = nn.Linear(dim, num_tokens)

        num_memory_tokens = default(num_memory_tokens, 0)
        self.num_memory_tokens = num_memory_tokens
        if num_memory_tokens > 0:
            self.memory_tokens = nn.Parameter(torch.randn(num_memory_tokens, dim))
            if hasattr(attn_layers, "num_memory_tokens"):
                attn_layers.num_memory_tokens = num_memory_tokens

    def init_(self) -> None:
        nn.init.normal_(self.token_emb.weight, std=0.02)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of the final hidden states."""
        if self.tie_embedding:
            return x @ self.token_emb.weight.t()
        return self.to_logits(x)

    def forward(
        self,
        x: torch.Tensor,
        return_embeddings: bool = False,
        mask: torch.Tensor | None = None,
        return_mems: bool = False,
        return_attn: bool = False,
        mems: list[torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``x``: (B, N) token ids. Returns (B, N, dim) embeddings or (B, N, num_tokens) logits."""
        if isinstance(self.pos_emb, AbsolutePositionalEmbedding) and x.shape[1] > self.max_seq_len:
            raise ValueError(f"sequence length {x.shape[1]} exceeds max_seq_len {self.max_seq_len}")
        b = x.shape[0]
        num_mem = self.num_memory_tokens
        x = self.token_emb(x)  # (B, N, emb_dim)
        x = x + self.pos_emb(x)
        x = self.emb_dropout(x)

        x = self.project_emb(x)  # (B, N, dim)

        if num_mem > 0:
            mem = repeat(self.memory_tokens, "n d -> b n d", b=b)
            x = torch.cat((mem, x), dim=1)  # (B, num_mem + N, dim)
            if exists(mask):
                mask = F.pad(mask, (num_mem, 0), value=True)

        x, intermediates = self.attn_layers(x, mask=mask, mems=mems, return_hiddens=True, return_attn=return_attn,
                                            **kwargs)
        x = self.norm(x)

        mem, x = x[:, :num_mem], x[:, num_mem:]

        out = self.logits(x) if not return_embeddings else x

        if return_mems:
            hiddens = intermediates.hiddens
            new_mems = [torch.cat(pair, dim=-2) for pair in zip(mems, hiddens)] if exists(mems) else hiddens
            new_mems = [t[..., -int(self.max_mem_len):, :].detach() for t in new_mems]
            return out, new_mems

        if return_attn:
            attn_maps = [t.post_softmax_attn for t in intermediates.attn_intermediates]
            return out, attn_maps

        return out
