"""The denoising U-Net of latent diffusion and its encoder half.

``UNetModel`` is the ADM U-Net (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec. 3),
itself built on the DDPM U-Net (Ho et al. 2020): residual blocks conditioned on the timestep (with
optional scale-shift norm, i.e. adaptive group norm, and BigGAN-style up/down-sampling residual
blocks), multi-head self-attention at chosen resolutions, optional class labels added to the time
embedding. With ``use_spatial_transformer`` the attention blocks become the cross-attention
``SpatialTransformer`` of Rombach et al. 2022 (sec. 3.3), which attends to a conditioning sequence.
``EncoderUNetModel`` is the downsampling half with a pooled head (the noisy-image classifier of ADM).

Module names and ordering match the original CompVis code so that its checkpoints load strictly.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules import fastpaths
from ldm.modules.attention import SpatialTransformer, attention, conv1x1_tokens
from ldm.modules.diffusionmodules.util import (
    avg_pool_nd,
    checkpoint,
    conv_nd,
    linear,
    normalization,
    timestep_embedding,
    zero_module,
)

POOL_TYPES = ("adaptive", "attention", "spatial", "spatial_v2")
#: Hidden width of the "spatial" pooling heads of EncoderUNetModel.
SPATIAL_POOL_HIDDEN = 2048


def convert_module_to_f16(module: nn.Module) -> None:
    """Cast the parameters and buffers of ``module`` to float16 in place (its norms compute in float32)."""
    module.half()


def convert_module_to_f32(module: nn.Module) -> None:
    """Cast the parameters and buffers of ``module`` back to float32 in place."""
    module.float()


def _to_list(value: Any) -> Any:
    """A plain list for list-like config values (OmegaConf ListConfig included); other values unchanged."""
    if isinstance(value, (str, bytes, int, float)) or value is None:
        return value
    try:
        return list(value)
    except TypeError:
        return value


class AttentionPool2d(nn.Module):
    """Attention pooling of a feature map to one vector (CLIP, Radford et al. 2021)."""

    def __init__(
        self,
        spacial_dim: int,  # side length of the (square) feature map
        embed_dim: int,  # channels of the feature map
        num_heads_channels: int,  # channels per attention head
        output_dim: int | None = None,  # output features; None = embed_dim
    ) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spacial_dim ** 2 + 1) / embed_dim ** 0.5)
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_heads_channels
        self.attention = QKVAttention(self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *_spatial = x.shape
        x = x.reshape(b, c, -1)  # (B, C, HW)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)  # (B, C, HW + 1)
        x = x + self.positional_embedding[None, :, :].to(x.dtype)  # (B, C, HW + 1)
        x = self.qkv_proj(x)  # (B, 3C, HW + 1)
        x = self.attention(x)  # (B, C, HW + 1)
        x = self.c_proj(x)  # (B, out, HW + 1)
        return x[:, :, 0]  # (B, out)


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    @abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the module to ``x`` given the timestep embeddings ``emb``."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """A sequential that hands the timestep embedding to the children that take it, the context to transformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 convolution.

    For 3-D signals only the inner two dimensions are upsampled.
    """

    def __init__(
        self,
        channels: int,  # input channels
        use_conv: bool,  # follow the upsampling with a convolution
        dims: int = 2,  # 1, 2 or 3: the signal's dimensionality
        out_channels: int | None = None,  # output channels (needs use_conv to differ); None = channels
        padding: int = 1,  # padding of the convolution
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=padding)
        elif self.out_channels != channels:
            raise ValueError(f"Upsample without use_conv keeps the channel count {channels}; "
                             f"got out_channels={out_channels}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"Upsample expects {self.channels} input channels; got {x.shape[1]}")
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")  # (B, C, 2H, 2W)
        if self.use_conv:
            x = self.conv(x)
        return x


class Downsample(nn.Module):
    """2x downsampling: a strided 3x3 convolution, or average pooling.

    For 3-D signals only the inner two dimensions are downsampled.
    """

    def __init__(
        self,
        channels: int,  # input channels
        use_conv: bool,  # strided convolution (True) or average pooling (False)
        dims: int = 2,  # 1, 2 or 3: the signal's dimensionality
        out_channels: int | None = None,  # output channels (needs use_conv to differ); None = channels
        padding: int = 1,  # padding of the convolution
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=padding)
        else:
            if self.channels != self.out_channels:
                raise ValueError(f"Downsample by pooling keeps the channel count {channels}; "
                                 f"got out_channels={out_channels}")
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"Downsample expects {self.channels} input channels; got {x.shape[1]}")
        return self.op(x)  # (B, C_out, H / 2, W / 2)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding, optionally up- or downsampling (BigGAN style)."""

    def __init__(
        self,
        channels: int,  # input channels
        emb_channels: int,  # channels of the timestep embedding
        dropout: float,  # dropout before the last convolution
        out_channels: int | None = None,  # output channels; None = channels
        use_conv: bool = False,  # a 3x3 (not 1x1) convolution on the skip path when the channel count changes
        use_scale_shift_norm: bool = False,  # condition by h = norm(h) * (1 + scale) + shift (adaptive group norm)
        dims: int = 2,  # 1, 2 or 3: the signal's dimensionality
        use_checkpoint: bool = False,  # gradient checkpointing while training
        up: bool = False,  # upsample by 2 inside the block
        down: bool = False,  # downsample by 2 inside the block
    ) -> None:
        super().__init__()
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            conv_nd(dims, channels, self.out_channels, 3, padding=1),
        )

        self.updown = up or down
        if up:
            self.h_upd = Upsample(channels, False, dims)
            self.x_upd = Upsample(channels, False, dims)
        elif down:
            self.h_upd = Downsample(channels, False, dims)
            self.x_upd = Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )

        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C, ...) features; ``emb``: (B, emb_channels) timestep embeddings."""
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint and self.training)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = in_rest(x)  # (B, C, H, W)
            h = self.h_upd(h)  # (B, C, H', W')
            x = self.x_upd(x)  # (B, C, H', W')
            h = in_conv(h)  # (B, C_out, H', W')
        else:
            h = self.in_layers(x)  # (B, C_out, H, W)
        emb_out = self.emb_layers(emb).type(h.dtype)  # (B, C_out) or (B, 2 C_out)
        while emb_out.ndim < h.ndim:
            emb_out = emb_out[..., None]  # (B, C_out, 1, 1)
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = out_norm(h) * (1 + scale) + shift
            h = out_rest(h)
        else:
            h = h + emb_out
            h = self.out_layers(h)
        return self.skip_connection(x) + h  # (B, C_out, H', W')


class _PackedQKVAttention(nn.Module):
    """Multi-head attention on a packed (B, 3 * heads * C, T) qkv tensor; subclasses say how it is packed."""

    def __init__(
        self,
        n_heads: int,  # attention heads
    ) -> None:
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        if width % (3 * self.n_heads):
            raise ValueError(f"qkv width {width} is not divisible by 3 * n_heads = {3 * self.n_heads}")
        return _packed_attention(*self.split_heads(qkv.transpose(1, 2))).transpose(1, 2)  # (B, h*C, T)

    @abstractmethod
    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views ``(B, T, h, C)`` of q, k, v in packed ``(B, T, 3 * h * C)`` tokens."""


class QKVAttentionLegacy(_PackedQKVAttention):
    """Multi-head attention on a packed (B, heads * 3 * C, T) qkv tensor, heads outermost (ADM's legacy order)."""

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views ``(B, T, h, C)`` of q, k, v in packed ``(B, T, h * 3 * C)`` tokens, heads outermost."""
        qkv = qkv.unflatten(-1, (self.n_heads, 3, -1))  # (B, T, h, 3, C)
        return qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]


class QKVAttention(_PackedQKVAttention):
    """Multi-head attention on a packed (B, 3 * heads * C, T) qkv tensor, q/k/v outermost (the new order)."""

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views ``(B, T, h, C)`` of q, k, v in packed ``(B, T, 3 * h * C)`` tokens, q/k/v outermost."""
        qkv = qkv.unflatten(-1, (3, self.n_heads, -1))  # (B, T, 3, h, C)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


def _packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of ``(B, T, h, C)`` query, key and value views (scale ``C ** -0.5``): ``(B, T, h*C)`` tokens.

    The original scales q and k by ``C ** -0.25`` each before their product; the fused kernel applies
    ``C ** -0.5`` once, the same number within float32 rounding.
    """
    out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, h, T, C)
    return out.transpose(1, 2).flatten(2)  # (B, T, h*C)


class AttentionBlock(nn.Module):
    """Self-attention over all positions of a feature map, with a residual connection (ADM)."""

    def __init__(
        self,
        channels: int,  # channels of the feature map
        num_heads: int = 1,  # attention heads (used when num_head_channels is -1)
        num_head_channels: int = -1,  # channels per head; -1 = use num_heads
        use_checkpoint: bool = False,  # gradient checkpointing while training
        use_new_attention_order: bool = False,  # split qkv before heads (QKVAttention) instead of after
    ) -> None:
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} are not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        if self.num_heads < 1:
            raise ValueError(f"AttentionBlock needs at least one head; got num_heads={num_heads}, "
                             f"num_head_channels={num_head_channels}")
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads) if use_new_attention_order else QKVAttentionLegacy(self.num_heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x,), self.parameters(), self.use_checkpoint and self.training)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        # on the (B, T, C) token view: free for a channels-last input; the 1x1 convolutions act as matrix products
        b, c, *spatial = x.shape
        qkv = conv1x1_tokens(self.qkv, self.norm(x).flatten(2).transpose(1, 2))  # (B, T, 3C)
        h = _packed_attention(*self.attention.split_heads(qkv))  # (B, T, C)
        h = conv1x1_tokens(self.proj_out, h)  # (B, T, C)
        return x + h.transpose(1, 2).unflatten(2, spatial)  # (B, C, *spatial)


def _restore_memory_format(module: nn.Module, _incompatible_keys: Any) -> None:
    """After ``load_state_dict(..., assign=True)`` put the newly assigned weights back in the model's memory format."""
    module.use_channels_last(module.channels_last)


def _input_blocks(
    dims: int,  # 1, 2 or 3: the signal's dimensionality
    in_channels: int,  # channels of the input
    model_channels: int,  # base channel count
    channel_mult: Sequence[int],  # channel multiplier per resolution level
    num_res_blocks: int,  # residual blocks per level
    attention_resolutions: Sequence[int],  # downsampling factors at which to attend
    conv_resample: bool,  # learned convolutions for downsampling
    resblock_updown: bool,  # residual blocks (not Downsample) change the resolution
    res_block: Callable[..., ResBlock],  # res_block(ch_in, ch_out=None, down=False), the model's residual block
    attention: Callable[[int], nn.Module],  # attention(ch), the model's attention block
) -> tuple[nn.ModuleList, list[int], int]:
    """The downsampling path that `UNetModel` and `EncoderUNetModel` share: an input convolution, then per level
    residual blocks (with attention at ``attention_resolutions``) and a downsampling block between levels.

    Returns the blocks, the output channels of each (the U-Net's skip connections) and the downsampling
    factor at the bottom.
    """
    blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(dims, in_channels, model_channels, 3, padding=1))])
    chans = [model_channels]
    ch = model_channels
    ds = 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            layers = [res_block(ch, mult * model_channels)]
            ch = mult * model_channels
            if ds in attention_resolutions:
                layers.append(attention(ch))
            blocks.append(TimestepEmbedSequential(*layers))
            chans.append(ch)
        if level != len(channel_mult) - 1:
            blocks.append(TimestepEmbedSequential(
                res_block(ch, ch, down=True) if resblock_updown
                else Downsample(ch, conv_resample, dims=dims, out_channels=ch)
            ))
            chans.append(ch)
            ds *= 2
    return blocks, chans, ds


class UNetModel(nn.Module):
    """The full U-Net with attention and timestep embedding (and optional class labels or cross-attention)."""

    def __init__(
        self,
        image_size: int,  # side of the input (latent) image; informational
        in_channels: int,  # channels of the input
        model_channels: int,  # base channel count
        out_channels: int,  # channels of the output
        num_res_blocks: int,  # residual blocks per resolution
        attention_resolutions: Sequence[int],  # downsampling factors (1, 2, 4, ...) at which to attend
        dropout: float = 0,  # dropout in the residual blocks
        channel_mult: Sequence[int] = (1, 2, 4, 8),  # channel multiplier per resolution level
        conv_resample: bool = True,  # learned convolutions (not plain resampling) between levels
        dims: int = 2,  # 1, 2 or 3: the signal's dimensionality
        num_classes: int | None = None,  # class-conditional with this many classes (y added to the time embedding)
        use_checkpoint: bool = False,  # gradient checkpointing while training
        use_fp16: bool = False,  # run the input/middle/output blocks in float16
        num_heads: int = -1,  # attention heads per attention layer (-1: use num_head_channels)
        num_head_channels: int = -1,  # fixed channels per head instead of a fixed head count (-1: use num_heads)
        num_heads_upsample: int = -1,  # heads in the upsampling path's AttentionBlocks; -1 = num_heads
        use_scale_shift_norm: bool = False,  # FiLM-like adaptive group norm in the residual blocks
        resblock_updown: bool = False,  # residual blocks (not Upsample/Downsample) change the resolution
        use_new_attention_order: bool = False,  # QKVAttention instead of QKVAttentionLegacy
        use_spatial_transformer: bool = False,  # SpatialTransformer (cross-attention) instead of AttentionBlock
        transformer_depth: int = 1,  # transformer blocks per SpatialTransformer
        context_dim: int | None = None,  # features of the cross-attention context
        n_embed: int | None = None,  # predict codebook ids over n_embed entries instead of the output image
        legacy: bool = True,  # the original's head-size rule for checkpoints made before num_head_channels
    ) -> None:
        super().__init__()
        attention_resolutions = _to_list(attention_resolutions)
        channel_mult = _to_list(channel_mult)
        context_dim = _to_list(context_dim)
        if use_spatial_transformer and context_dim is None:
            raise ValueError("use_spatial_transformer=True needs context_dim, the features of the cross-attention "
                             "conditioning; got context_dim=None")
        if context_dim is not None and not use_spatial_transformer:
            raise ValueError(f"context_dim={context_dim} is only used by the spatial transformer; "
                             f"set use_spatial_transformer=True")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("set num_heads or num_head_channels; both are -1")
        if dims not in (1, 2, 3):
            raise ValueError(f"dims must be 1, 2 or 3; got {dims!r}")

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample
        self.predict_codebook_ids = n_embed is not None

        def res_block(ch_in: int, ch_out: int | None = None, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(ch_in, time_embed_dim, dropout, out_channels=ch_out, dims=dims,
                            use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm,
                            up=up, down=down)

        def attention(ch: int, heads_attention_block: int | None = None) -> nn.Module:
            # the original's head arithmetic
            if num_head_channels == -1:
                heads = num_heads
                dim_head = ch // heads
            else:
                heads = ch // num_head_channels
                dim_head = num_head_channels
            if legacy:
                dim_head = ch // heads if use_spatial_transformer else num_head_channels
            if use_spatial_transformer:
                block = SpatialTransformer(ch, heads, dim_head, depth=transformer_depth, context_dim=context_dim,
                                           use_checkpoint=use_checkpoint)
            else:
                block = AttentionBlock(ch, use_checkpoint=use_checkpoint,
                                       num_heads=heads if heads_attention_block is None else heads_attention_block,
                                       num_head_channels=dim_head, use_new_attention_order=use_new_attention_order)
            return block

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            linear(model_channels, time_embed_dim),
            nn.SiLU(),
            linear(time_embed_dim, time_embed_dim),
        )

        if self.num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        self.input_blocks, input_block_chans, ds = _input_blocks(
            dims, in_channels, model_channels, channel_mult, num_res_blocks, attention_resolutions, conv_resample,
            resblock_updown, res_block, attention)
        self._feature_size = sum(input_block_chans)
        ch = input_block_chans[-1]

        middle_attention = attention(ch)
        self.middle_block = TimestepEmbedSequential(
            res_block(ch),
            middle_attention,
            res_block(ch),
        )
        self._feature_size += ch

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = input_block_chans.pop()
                layers = [res_block(ch + ich, model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attention(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    out_ch = ch
                    layers.append(
                        res_block(ch, out_ch, up=True) if resblock_updown
                        else Upsample(ch, conv_resample, dims=dims, out_channels=out_ch)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
                self._feature_size += ch

        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(conv_nd(dims, model_channels, out_channels, 3, padding=1)),
        )
        if self.predict_codebook_ids:
            self.id_predictor = nn.Sequential(
                normalization(ch),
                conv_nd(dims, model_channels, n_embed, 1),
            )
        if use_fp16:
            self.convert_to_fp16()
        self.channels_last = False
        self.use_channels_last(dims == 2)
        self.register_load_state_dict_post_hook(_restore_memory_format)

    def use_channels_last(self, flag: bool = True) -> None:
        """Run 2-D feature maps (and keep the convolution weights) in the channels-last memory format, or not.

        Channels-last makes the oneDNN/cuDNN convolutions faster and the token view of a feature map that the
        attention blocks work on a free view. Values and state-dict keys are the same either way. With the
        fast paths off (``ldm.modules.fastpaths``, ``LDM_FAST_PATHS=0``) the contiguous format is kept.
        """
        self.channels_last = flag
        self.to(memory_format=fastpaths.memory_format(flag))

    def convert_to_fp16(self) -> None:
        """Run the input, middle and output blocks in float16."""
        convert_module_to_f16(self.input_blocks)
        convert_module_to_f16(self.middle_block)
        convert_module_to_f16(self.output_blocks)
        self.dtype = torch.float16

    def convert_to_fp32(self) -> None:
        """Run the input, middle and output blocks in float32."""
        convert_module_to_f32(self.input_blocks)
        convert_module_to_f32(self.middle_block)
        convert_module_to_f32(self.output_blocks)
        self.dtype = torch.float32

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | None = None, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Denoise a batch.

        ``x``: (B, in_channels, H, W); ``timesteps``: (B,); ``context``: (B, L, context_dim) for cross-attention;
        ``y``: (B,) class labels when the model is class-conditional. Returns (B, out_channels, H, W), or
        (B, n_embed, H, W) logits when predicting codebook ids.
        """
        if (y is not None) != (self.num_classes is not None):
            raise ValueError(f"y (class labels) must be given if and only if the model is class-conditional; "
                             f"num_classes={self.num_classes}, y {'given' if y is not None else 'missing'}")
        if timesteps is None:
            raise ValueError("UNetModel.forward needs timesteps, a (B,) tensor")
        hs = []
        t_emb = timestep_embedding(timesteps, self.model_channels, repeat_only=False)  # (B, mc)
        emb = self.time_embed(t_emb)  # (B, 4 mc)

        if self.num_classes is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"y must have shape ({x.shape[0]},); got {tuple(y.shape)}")
            emb = emb + self.label_emb(y)  # (B, 4 mc)

        h = x.type(self.dtype)
        if h.ndim == 4:
            h = h.contiguous(memory_format=fastpaths.memory_format(self.channels_last))
        emb = emb.type(self.dtype)
        if context is not None:
            context = context.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb, context)  # (B, mc * mult, H / ds, W / ds)
            hs.append(h)
        h = self.middle_block(h, emb, context)  # (B, mc * mult[-1], H / ds_max, W / ds_max)
        for module in self.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)  # (B, ch + ich, H / ds, W / ds)
            h = module(h, emb, context)
        h = h.type(x.dtype)  # (B, mc, H, W)
        out = self.id_predictor(h) if self.predict_codebook_ids else self.out(h)  # (B, n_embed or out_channels, H, W)
        return out.contiguous()


class EncoderUNetModel(nn.Module):
    """The downsampling half of the U-Net with a pooled head: a noisy-image classifier or regressor."""

    def __init__(
        self,
        image_size: int,  # side of the input image (sets the attention-pool size)
        in_channels: int,  # channels of the input
        model_channels: int,  # base channel count
        out_channels: int,  # output features (e.g. classes)
        num_res_blocks: int,  # residual blocks per resolution
        attention_resolutions: Sequence[int],  # downsampling factors at which to attend
        dropout: float = 0,  # dropout in the residual blocks
        channel_mult: Sequence[int] = (1, 2, 4, 8),  # channel multiplier per resolution level
        conv_resample: bool = True,  # learned convolutions for downsampling
        dims: int = 2,  # 1, 2 or 3: the signal's dimensionality
        use_checkpoint: bool = False,  # gradient checkpointing while training
        use_fp16: bool = False,  # run the input and middle blocks in float16
        num_heads: int = 1,  # attention heads (used when num_head_channels is -1)
        num_head_channels: int = -1,  # channels per head; -1 = use num_heads
        num_heads_upsample: int = -1,  # unused (no upsampling path); kept for config compatibility
        use_scale_shift_norm: bool = False,  # adaptive group norm in the residual blocks
        resblock_updown: bool = False,  # residual blocks (not Downsample) change the resolution
        use_new_attention_order: bool = False,  # QKVAttention instead of QKVAttentionLegacy
        pool: str = "adaptive",  # head: adaptive, attention, spatial or spatial_v2
        *args: Any,  # ignored, as in the original (UNet-only options a config may pass)
        **kwargs: Any,  # ignored, as in the original
    ) -> None:
        super().__init__()
        attention_resolutions = _to_list(attention_resolutions)
        channel_mult = _to_list(channel_mult)
        if pool not in POOL_TYPES:
            raise ValueError(f"pool must be one of {', '.join(POOL_TYPES)}; got {pool!r}")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads

        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.use_checkpoint = use_checkpoint
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample

        def res_block(ch_in: int, ch_out: int | None = None, down: bool = False) -> ResBlock:
            return ResBlock(ch_in, time_embed_dim, dropout, out_channels=ch_out, dims=dims,
                            use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm, down=down)

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, use_checkpoint=use_checkpoint, num_heads=num_heads,
                                  num_head_channels=num_head_channels, use_new_attention_order=use_new_attention_order)

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            linear(model_channels, time_embed_dim),
            nn.SiLU(),
            linear(time_embed_dim, time_embed_dim),
        )

        self.input_blocks, input_block_chans, ds = _input_blocks(
            dims, in_channels, model_channels, channel_mult, num_res_blocks, attention_resolutions, conv_resample,
            resblock_updown, res_block, attention)
        self._feature_size = sum(input_block_chans)
        ch = input_block_chans[-1]

        self.middle_block = TimestepEmbedSequential(res_block(ch), attention(ch), res_block(ch))
        self._feature_size += ch
        self.pool = pool
        if pool == "adaptive":
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d((1, 1)),
                zero_module(conv_nd(dims, ch, out_channels, 1)),
                nn.Flatten(),
            )
        elif pool == "attention":
            if num_head_channels == -1:
                raise ValueError("pool='attention' needs num_head_channels; got -1")
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels),
            )
        elif pool == "spatial":
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, SPATIAL_POOL_HIDDEN),
                nn.ReLU(),
                nn.Linear(SPATIAL_POOL_HIDDEN, self.out_channels),
            )
        else:  # spatial_v2
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, SPATIAL_POOL_HIDDEN),
                normalization(SPATIAL_POOL_HIDDEN),
                nn.SiLU(),
                nn.Linear(SPATIAL_POOL_HIDDEN, self.out_channels),
            )
        if use_fp16:
            self.convert_to_fp16()

    def convert_to_fp16(self) -> None:
        """Run the input and middle blocks in float16."""
        convert_module_to_f16(self.input_blocks)
        convert_module_to_f16(self.middle_block)
        self.dtype = torch.float16

    def convert_to_fp32(self) -> None:
        """Run the input and middle blocks in float32."""
        convert_module_to_f32(self.input_blocks)
        convert_module_to_f32(self.middle_block)
        self.dtype = torch.float32

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x``: (B, in_channels, H, W); ``timesteps``: (B,). Returns (B, out_channels)."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))  # (B, 4 mc)
        emb = emb.type(self.dtype)
        spatial = self.pool.startswith("spatial")
        results = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)  # (B, ch, H / ds, W / ds)
            if spatial:
                results.append(h.type(x.dtype).mean(dim=(2, 3)))  # (B, ch)
        h = self.middle_block(h, emb)
        if spatial:
            results.append(h.type(x.dtype).mean(dim=(2, 3)))
            h = torch.cat(results, dim=-1)  # (B, feature_size)
            return self.out(h)
        return self.out(h.type(x.dtype))  # (B, out_channels)
