"""Convolutional building blocks of the first-stage autoencoders and of the pixel-space DDPM U-Net.

The encoder/decoder pair is the one of the latent diffusion first stages (Rombach et al., "High-Resolution
Image Synthesis with Latent Diffusion Models", CVPR 2022), itself taken from VQGAN (Esser et al.,
"Taming Transformers for High-Resolution Image Synthesis", CVPR 2021) and the DDPM U-Net (Ho et al.,
"Denoising Diffusion Probabilistic Models", NeurIPS 2020). Module names follow the original code, so
the released checkpoints load with ``strict=True``.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

logger = logging.getLogger(__name__)

ATTN_TYPES = ("vanilla", "linear", "none")
GROUPNORM_GROUPS = 32  # GroupNorm groups of every block
GROUPNORM_EPS = 1e-6  # GroupNorm epsilon of every block (the original's; checkpoints depend on it)


def get_timestep_embedding(timesteps: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """Sinusoidal timestep embedding of DDPM (Ho et al. 2020; Vaswani et al. 2017): ``[sin, cos]``."""
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D tensor of shape (B,); got shape {tuple(timesteps.shape)}")
    half_dim = embedding_dim // 2
    freq = math.log(10000) / (half_dim - 1)
    freq = torch.exp(torch.arange(half_dim, dtype=torch.float32) * -freq).to(device=timesteps.device)
    emb = timesteps.float()[:, None] * freq[None, :]  # (B, half_dim)
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)  # (B, 2 * half_dim)
    if embedding_dim % 2 == 1:  # zero pad to an odd width
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """Swish / SiLU: ``x * sigmoid(x)``."""
    return x * torch.sigmoid(x)


def Normalize(in_channels: int, num_groups: int = GROUPNORM_GROUPS) -> nn.GroupNorm:  # noqa: N802 - original name
    """The GroupNorm used throughout (eps 1e-6, affine)."""
    return nn.GroupNorm(num_groups=num_groups, num_channels=in_channels, eps=GROUPNORM_EPS, affine=True)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 convolution."""

    def __init__(self,
                 in_channels: int,  # channels in and out
                 with_conv: bool,  # apply a 3x3 convolution after upsampling
                 ):
        super().__init__()
        self.with_conv = with_conv
        if self.with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        if self.with_conv:
            x = self.conv(x)
        return x


class Downsample(nn.Module):
    """2x downsampling: a stride-2 3x3 convolution with asymmetric (right/bottom) padding, or average pooling."""

    def __init__(self,
                 in_channels: int,  # channels in and out
                 with_conv: bool,  # strided convolution (True) or 2x2 average pooling (False)
                 ):
        super().__init__()
        self.with_conv = with_conv
        if self.with_conv:
            # torch convolutions pad symmetrically; the asymmetric padding is applied in forward
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0)  # (B, C, H+1, W+1)
            return self.conv(x)  # (B, C, H/2, W/2)
        return F.avg_pool2d(x, kernel_size=2, stride=2)  # (B, C, H/2, W/2)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: GroupNorm, swish, conv, (+ timestep), GroupNorm, swish, dropout, conv."""

    def __init__(self, *,
                 in_channels: int,  # input channels
                 out_channels: int | None = None,  # output channels; None keeps in_channels
                 conv_shortcut: bool = False,  # 3x3 conv on the skip path when channels change (else 1x1)
                 dropout: float,  # dropout probability before the second convolution
                 temb_channels: int = 512,  # width of the timestep embedding; 0 for none
                 ):
        super().__init__()
        self.in_channels = in_channels
        out_channels = in_channels if out_channels is None else out_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut

        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels > 0:
            self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if self.in_channels != self.out_channels:
            if self.use_conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(nonlinearity(self.norm1(x)))  # (B, C_out, H, W)
        if temb is not None:
            h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]  # (B, C_out, 1, 1) broadcast
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))  # (B, C_out, H, W)
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all ``H * W`` positions, with a residual connection."""

    def __init__(self,
                 in_channels: int,  # channels in and out (also the attention width)
                 ):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        b, c, h, w = x.shape
        q = rearrange(self.q(h_), "b c h w -> b 1 (h w) c")  # (B, 1, HW, C)
        k = rearrange(self.k(h_), "b c h w -> b 1 (h w) c")  # (B, 1, HW, C)
        v = rearrange(self.v(h_), "b c h w -> b 1 (h w) c")  # (B, 1, HW, C)
        h_ = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C), softmax(q k^T / sqrt(C)) v
        h_ = rearrange(h_, "b 1 (h w) c -> b c h w", h=h, w=w)  # (B, C, H, W)
        return x + self.proj_out(h_)


@functools.lru_cache(maxsize=None)
def _lin_attn_block_class() -> type:
    # LinearAttention lives in ldm.modules.attention; import it only when a linear block is asked for
    from ldm.modules.attention import LinearAttention

    class LinAttnBlock(LinearAttention):
        """Linear attention with one head as wide as the input, usable wherever `AttnBlock` is."""

        def __init__(self,
                     in_channels: int,  # channels in and out (also the head width)
                     ):
            super().__init__(dim=in_channels, heads=1, dim_head=in_channels)

    LinAttnBlock.__module__ = __name__
    return LinAttnBlock


def __getattr__(name: str) -> Any:
    # `LinAttnBlock` is built on first access, so this module imports without ldm.modules.attention
    if name == "LinAttnBlock":
        return _lin_attn_block_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_attn(in_channels: int, attn_type: str = "vanilla") -> nn.Module:
    """The attention block of type ``"vanilla"`` (`AttnBlock`), ``"linear"`` (`LinAttnBlock`) or ``"none"``."""
    if attn_type not in ATTN_TYPES:
        raise ValueError(f"attn_type must be one of {', '.join(ATTN_TYPES)}; got {attn_type!r}")
    logger.debug("making attention of type %r with %d in_channels", attn_type, in_channels)
    if attn_type == "vanilla":
        return AttnBlock(in_channels)
    if attn_type == "none":
        return nn.Identity()
    return _lin_attn_block_class()(in_channels)


def _down_path(owner: nn.Module, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
               attn_resolutions: Sequence[int], dropout: float, resamp_with_conv: bool, resolution: int,
               temb_ch: int, attn_type: str) -> tuple[int, int]:
    """Build ``owner.down`` (resolution levels of residual blocks, attention, downsampling) and ``owner.mid``.

    Returns the channel count and spatial resolution at the bottom.
    """
    curr_res = resolution
    in_ch_mult = (1,) + tuple(ch_mult)
    owner.down = nn.ModuleList()
    block_in = ch
    for i_level in range(len(ch_mult)):
        block = nn.ModuleList()
        attn = nn.ModuleList()
        block_in = ch * in_ch_mult[i_level]
        block_out = ch * ch_mult[i_level]
        for _ in range(num_res_blocks):
            block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, temb_channels=temb_ch,
                                     dropout=dropout))
            block_in = block_out
            if curr_res in attn_resolutions:
                attn.append(make_attn(block_in, attn_type=attn_type))
        down = nn.Module()
        down.block = block
        down.attn = attn
        if i_level != len(ch_mult) - 1:
            down.downsample = Downsample(block_in, resamp_with_conv)
            curr_res = curr_res // 2
        owner.down.append(down)
    _mid(owner, block_in, temb_ch, dropout, attn_type)
    return block_in, curr_res


def _mid(owner: nn.Module, block_in: int, temb_ch: int, dropout: float, attn_type: str) -> None:
    """Build ``owner.mid``: residual block, attention, residual block."""
    owner.mid = nn.Module()
    owner.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=temb_ch,
                                    dropout=dropout)
    owner.mid.attn_1 = make_attn(block_in, attn_type=attn_type)
    owner.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=temb_ch,
                                    dropout=dropout)


def _run_down(owner: nn.Module, x: torch.Tensor, temb: torch.Tensor | None) -> list[torch.Tensor]:
    """Run ``owner.conv_in`` and ``owner.down``; returns every intermediate feature map (skip connections)."""
    hs = [owner.conv_in(x)]  # (B, ch, H, W)
    for i_level in range(owner.num_resolutions):
        for i_block in range(owner.num_res_blocks):
            h = owner.down[i_level].block[i_block](hs[-1], temb)
            if len(owner.down[i_level].attn) > 0:
                h = owner.down[i_level].attn[i_block](h)
            hs.append(h)
        if i_level != owner.num_resolutions - 1:
            hs.append(owner.down[i_level].downsample(hs[-1]))  # (B, C, H/2, W/2)
    return hs


def _run_mid(owner: nn.Module, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
    h = owner.mid.block_1(h, temb)
    h = owner.mid.attn_1(h)
    return owner.mid.block_2(h, temb)


class Model(nn.Module):
    """The pixel-space DDPM U-Net (Ho et al. 2020) with a sinusoidal timestep embedding."""

    def __init__(self, *,
                 ch: int,  # base channel count
                 out_ch: int,  # output channels
                 ch_mult: Sequence[int] = (1, 2, 4, 8),  # channel multiplier per resolution level
                 num_res_blocks: int,  # residual blocks per level on the way down (one more on the way up)
                 attn_resolutions: Sequence[int],  # resolutions at which attention blocks are added
                 dropout: float = 0.0,  # dropout inside the residual blocks
                 resamp_with_conv: bool = True,  # learned (conv) up/downsampling
                 in_channels: int,  # input channels (plus context channels when a context is concatenated)
                 resolution: int,  # input resolution, to place the attention blocks
                 use_timestep: bool = True,  # condition on a timestep embedding
                 use_linear_attn: bool = False,  # shorthand for attn_type="linear"
                 attn_type: str = "vanilla",  # "vanilla", "linear" or "none"
                 ):
        super().__init__()
        if use_linear_attn:
            attn_type = "linear"
        self.ch = ch
        self.temb_ch = self.ch * 4
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels

        self.use_timestep = use_timestep
        if self.use_timestep:
            self.temb = nn.Module()
            self.temb.dense = nn.ModuleList([nn.Linear(self.ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])

        self.conv_in = nn.Conv2d(in_channels, self.ch, kernel_size=3, stride=1, padding=1)
        block_in, curr_res = _down_path(self, ch, ch_mult, num_res_blocks, attn_resolutions, dropout,
                                        resamp_with_conv, resolution, self.temb_ch, attn_type)

        in_ch_mult = (1,) + tuple(ch_mult)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            skip_in = ch * ch_mult[i_level]
            for i_block in range(self.num_res_blocks + 1):
                if i_block == self.num_res_blocks:
                    skip_in = ch * in_ch_mult[i_level]
                block.append(ResnetBlock(in_channels=block_in + skip_in, out_channels=block_out,
                                         temb_channels=self.temb_ch, dropout=dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(make_attn(block_in, attn_type=attn_type))
            up = nn.Module()
            up.block = block
            up.attn = attn
            if i_level != 0:
                up.upsample = Upsample(block_in, resamp_with_conv)
                curr_res = curr_res * 2
            self.up.insert(0, up)  # prepend: up[i] is the level of down[i]

        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:  # spatially aligned context, concatenated along channels
            x = torch.cat((x, context), dim=1)  # (B, C_in, H, W)
        if self.use_timestep:
            if t is None:
                raise ValueError("this Model uses a timestep embedding (use_timestep=True): pass t")
            temb = get_timestep_embedding(t, self.ch)  # (B, ch)
            temb = self.temb.dense[1](nonlinearity(self.temb.dense[0](temb)))  # (B, 4 ch)
        else:
            temb = None

        hs = _run_down(self, x, temb)
        h = _run_mid(self, hs[-1], temb)  # (B, C, H / 2^(L-1), W / 2^(L-1))
        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = self.up[i_level].block[i_block](torch.cat([h, hs.pop()], dim=1), temb)
                if len(self.up[i_level].attn) > 0:
                    h = self.up[i_level].attn[i_block](h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))  # (B, out_ch, H, W)

    def get_last_layer(self) -> torch.Tensor:
        return self.conv_out.weight


class Encoder(nn.Module):
    """The first-stage encoder: image ``(B, C, H, W)`` to latent ``(B, z, H / 2^(L-1), W / 2^(L-1))``."""

    def __init__(self, *,
                 ch: int,  # base channel count
                 out_ch: int | None,  # output channels of the matching decoder (unused here; configs share it)
                 ch_mult: Sequence[int] = (1, 2, 4, 8),  # channel multiplier per level; L levels downsample L-1 times
                 num_res_blocks: int,  # residual blocks per level
                 attn_resolutions: Sequence[int],  # resolutions at which attention blocks are added
                 dropout: float = 0.0,  # dropout inside the residual blocks
                 resamp_with_conv: bool = True,  # learned (conv) downsampling
                 in_channels: int,  # image channels
                 resolution: int,  # input resolution, to place the attention blocks
                 z_channels: int,  # latent channels
                 double_z: bool = True,  # output 2 * z_channels (mean and log-variance of a Gaussian)
                 use_linear_attn: bool = False,  # shorthand for attn_type="linear"
                 attn_type: str = "vanilla",  # "vanilla", "linear" or "none"
                 **ignore_kwargs: Any,  # decoder-only options of a shared ddconfig (give_pre_end, tanh_out)
                 ):
        super().__init__()
        if use_linear_attn:
            attn_type = "linear"
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.in_ch_mult = (1,) + tuple(ch_mult)

        self.conv_in = nn.Conv2d(in_channels, self.ch, kernel_size=3, stride=1, padding=1)
        block_in, _ = _down_path(self, ch, ch_mult, num_res_blocks, attn_resolutions, dropout, resamp_with_conv,
                                 resolution, self.temb_ch, attn_type)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, kernel_size=3, stride=1,
                                  padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hs = _run_down(self, x, None)
        h = _run_mid(self, hs[-1], None)  # (B, C, H / 2^(L-1), W / 2^(L-1))
        return self.conv_out(nonlinearity(self.norm_out(h)))  # (B, z or 2z, H / 2^(L-1), W / 2^(L-1))


class Decoder(nn.Module):
    """The first-stage decoder: latent ``(B, z, h, w)`` to image ``(B, out_ch, h * 2^(L-1), w * 2^(L-1))``."""

    def __init__(self, *,
                 ch: int,  # base channel count
                 out_ch: int,  # image channels
                 ch_mult: Sequence[int] = (1, 2, 4, 8),  # channel multiplier per level; L levels upsample L-1 times
                 num_res_blocks: int,  # residual blocks per level (plus one)
                 attn_resolutions: Sequence[int],  # resolutions at which attention blocks are added
                 dropout: float = 0.0,  # dropout inside the residual blocks
                 resamp_with_conv: bool = True,  # learned (conv) upsampling
                 in_channels: int | None,  # image channels of the matching encoder (unused here)
                 resolution: int,  # output resolution, to place the attention blocks
                 z_channels: int,  # latent channels
                 give_pre_end: bool = False,  # return the features before the output norm/conv
                 tanh_out: bool = False,  # squash the output with tanh
                 use_linear_attn: bool = False,  # shorthand for attn_type="linear"
                 attn_type: str = "vanilla",  # "vanilla", "linear" or "none"
                 **ignorekwargs: Any,  # encoder-only options of a shared ddconfig (double_z)
                 ):
        super().__init__()
        if use_linear_attn:
            attn_type = "linear"
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out

        block_in = ch * ch_mult[self.num_resolutions - 1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, z_channels, curr_res, curr_res)
        logger.debug("Working with z of shape %s = %d dimensions.", self.z_shape, math.prod(self.z_shape))

        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        _mid(self, block_in, self.temb_ch, dropout, attn_type)

        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(self.num_res_blocks + 1):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, temb_channels=self.temb_ch,
                                         dropout=dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(make_attn(block_in, attn_type=attn_type))
            up = nn.Module()
            up.block = block
            up.attn = attn
            if i_level != 0:
                up.upsample = Upsample(block_in, resamp_with_conv)
                curr_res = curr_res * 2
            self.up.insert(0, up)  # prepend: up[i] is the level of the encoder's down[i]

        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.last_z_shape = z.shape
        h = self.conv_in(z)  # (B, C, h, w)
        h = _run_mid(self, h, None)
        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = self.up[i_level].block[i_block](h, None)
                if len(self.up[i_level].attn) > 0:
                    h = self.up[i_level].attn[i_block](h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)  # (B, C, 2h, 2w)
        if self.give_pre_end:
            return h  # (B, ch * ch_mult[0], H, W)
        h = self.conv_out(nonlinearity(self.norm_out(h)))  # (B, out_ch, H, W)
        if self.tanh_out:
            h = torch.tanh(h)
        return h


class SimpleDecoder(nn.Module):
    """A small decoder: 1x1 conv, three residual blocks, 1x1 conv, one 2x upsampling, output conv."""

    def __init__(self,
                 in_channels: int,  # input channels
                 out_channels: int,  # output channels
                 *args: Any,  # accepted and ignored, as in the original
                 **kwargs: Any,  # accepted and ignored, as in the original
                 ):
        super().__init__()
        self.model = nn.ModuleList([
            nn.Conv2d(in_channels, in_channels, 1),
            ResnetBlock(in_channels=in_channels, out_channels=2 * in_channels, temb_channels=0, dropout=0.0),
            ResnetBlock(in_channels=2 * in_channels, out_channels=4 * in_channels, temb_channels=0, dropout=0.0),
            ResnetBlock(in_channels=4 * in_channels, out_channels=2 * in_channels, temb_channels=0, dropout=0.0),
            nn.Conv2d(2 * in_channels, in_channels, 1),
            Upsample(in_channels, with_conv=True),
        ])
        self.norm_out = Normalize(in_channels)
        self.conv_out = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.model:
            x = layer(x, None) if isinstance(layer, ResnetBlock) else layer(x)  # ends at (B, C_in, 2H, 2W)
        return self.conv_out(nonlinearity(self.norm_out(x)))  # (B, C_out, 2H, 2W)


class UpsampleDecoder(nn.Module):
    """Residual blocks with 2x upsampling between levels, then an output conv."""

    def __init__(self,
                 in_channels: int,  # input channels
                 out_channels: int,  # output channels
                 ch: int,  # base channel count
                 num_res_blocks: int,  # residual blocks per level (plus one)
                 resolution: int,  # output resolution
                 ch_mult: Sequence[int] = (2, 2),  # channel multiplier per level
                 dropout: float = 0.0,  # dropout inside the residual blocks
                 ):
        super().__init__()
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        block_in = in_channels
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.res_blocks = nn.ModuleList()
        self.upsample_blocks = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            res_block = []
            block_out = ch * ch_mult[i_level]
            for _ in range(self.num_res_blocks + 1):
                res_block.append(ResnetBlock(in_channels=block_in, out_channels=block_out,
                                             temb_channels=self.temb_ch, dropout=dropout))
                block_in = block_out
            self.res_blocks.append(nn.ModuleList(res_block))
            if i_level != self.num_resolutions - 1:
                self.upsample_blocks.append(Upsample(block_in, True))
                curr_res = curr_res * 2
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i_level in range(self.num_resolutions):
            for i_block in range(self.num_res_blocks + 1):
                h = self.res_blocks[i_level][i_block](h, None)
            if i_level != self.num_resolutions - 1:
                h = self.upsample_blocks[i_level](h)  # (B, C, 2h, 2w)
        return self.conv_out(nonlinearity(self.norm_out(h)))  # (B, out_channels, H, W)


class LatentRescaler(nn.Module):
    """Residual blocks, resize by ``factor``, attention, residual blocks, 1x1 conv."""

    def __init__(self,
                 factor: float,  # spatial resize factor
                 in_channels: int,  # input channels
                 mid_channels: int,  # width of the residual blocks
                 out_channels: int,  # output channels
                 depth: int = 2,  # residual blocks before and after the resize
                 ):
        super().__init__()
        self.factor = factor
        self.conv_in = nn.Conv2d(in_channels, mid_channels, kernel_size=3, stride=1, padding=1)
        self.res_block1 = nn.ModuleList([ResnetBlock(in_channels=mid_channels, out_channels=mid_channels,
                                                     temb_channels=0, dropout=0.0) for _ in range(depth)])
        self.attn = AttnBlock(mid_channels)
        self.res_block2 = nn.ModuleList([ResnetBlock(in_channels=mid_channels, out_channels=mid_channels,
                                                     temb_channels=0, dropout=0.0) for _ in range(depth)])
        self.conv_out = nn.Conv2d(mid_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)  # (B, mid, H, W)
        for block in self.res_block1:
            x = block(x, None)
        size = (int(round(x.shape[2] * self.factor)), int(round(x.shape[3] * self.factor)))
        x = F.interpolate(x, size=size)  # (B, mid, H * factor, W * factor)
        x = self.attn(x)
        for block in self.res_block2:
            x = block(x, None)
        return self.conv_out(x)  # (B, out_channels, H * factor, W * factor)


class MergedRescaleEncoder(nn.Module):
    """An `Encoder` followed by a `LatentRescaler`."""

    def __init__(self,
                 in_channels: int,  # image channels
                 ch: int,  # base channel count
                 resolution: int,  # input resolution
                 out_ch: int,  # output channels
                 num_res_blocks: int,  # residual blocks per encoder level
                 attn_resolutions: Sequence[int],  # resolutions at which attention blocks are added
                 dropout: float = 0.0,  # dropout inside the residual blocks
                 resamp_with_conv: bool = True,  # learned (conv) downsampling
                 ch_mult: Sequence[int] = (1, 2, 4, 8),  # channel multiplier per level
                 rescale_factor: float = 1.0,  # spatial resize factor of the rescaler
                 rescale_module_depth: int = 1,  # residual blocks before and after the resize
                 ):
        super().__init__()
        intermediate_chn = ch * ch_mult[-1]
        self.encoder = Encoder(in_channels=in_channels, num_res_blocks=num_res_blocks, ch=ch, ch_mult=ch_mult,
                               z_channels=intermediate_chn, double_z=False, resolution=resolution,
                               attn_resolutions=attn_resolutions, dropout=dropout,
                               resamp_with_conv=resamp_with_conv, out_ch=None)
        self.rescaler = LatentRescaler(factor=rescale_factor, in_channels=intermediate_chn,
                                       mid_channels=intermediate_chn, out_channels=out_ch,
                                       depth=rescale_module_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rescaler(self.encoder(x))  # (B, out_ch, h * factor, w * factor)


class MergedRescaleDecoder(nn.Module):
    """A `LatentRescaler` followed by a `Decoder`."""

    def __init__(self,
                 z_channels: int,  # latent channels
                 out_ch: int,  # image channels
                 resolution: int,  # output resolution
                 num_res_blocks: int,  # residual blocks per decoder level
                 attn_resolutions: Sequence[int],  # resolutions at which attention blocks are added
                 ch: int,  # base channel count
                 ch_mult: Sequence[int] = (1, 2, 4, 8),  # channel multiplier per level
                 dropout: float = 0.0,  # dropout inside the residual blocks
                 resamp_with_conv: bool = True,  # learned (conv) upsampling
                 rescale_factor: float = 1.0,  # spatial resize factor of the rescaler
                 rescale_module_depth: int = 1,  # residual blocks before and after the resize
                 ):
        super().__init__()
        tmp_chn = z_channels * ch_mult[-1]
        self.decoder = Decoder(out_ch=out_ch, z_channels=tmp_chn, attn_resolutions=attn_resolutions, dropout=dropout,
                               resamp_with_conv=resamp_with_conv, in_channels=None, num_res_blocks=num_res_blocks,
                               ch_mult=ch_mult, resolution=resolution, ch=ch)
        self.rescaler = LatentRescaler(factor=rescale_factor, in_channels=z_channels, mid_channels=tmp_chn,
                                       out_channels=tmp_chn, depth=rescale_module_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.rescaler(x))  # (B, out_ch, H, W)


class Upsampler(nn.Module):
    """Upsample a latent map from ``in_size`` to ``out_size``: a `LatentRescaler` and a `Decoder`."""

    def __init__(self,
                 in_size: int,  # input spatial size
                 out_size: int,  # output spatial size (at least in_size)
                 in_channels: int,  # input channels
                 out_channels: int,  # output channels
                 ch_mult: int = 2,  # channel multiplier of every decoder level
                 ):
        super().__init__()
        if out_size < in_size:
            raise ValueError(f"out_size must be at least in_size ({in_size}); got {out_size}")
        num_blocks = int(math.log2(out_size // in_size)) + 1
        factor_up = 1.0 + (out_size % in_size)
        logger.info("Building %s with in_size: %d --> out_size %d and factor %s",
                    self.__class__.__name__, in_size, out_size, factor_up)
        self.rescaler = LatentRescaler(factor=factor_up, in_channels=in_channels, mid_channels=2 * in_channels,
                                       out_channels=in_channels)
        self.decoder = Decoder(out_ch=out_channels, resolution=out_size, z_channels=in_channels, num_res_blocks=2,
                               attn_resolutions=[], in_channels=None, ch=in_channels,
                               ch_mult=[ch_mult for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.rescaler(x))  # (B, out_channels, out_size, out_size)


class Resize(nn.Module):
    """Fixed (non-learned) interpolation by a scale factor."""

    def __init__(self,
                 in_channels: int | None = None,  # unused: learned resizing is not available
                 learned: bool = False,  # learned resizing; not available (the original never implemented it)
                 mode: str = "bilinear",  # interpolation mode of F.interpolate
                 ):
        super().__init__()
        if learned:
            raise ValueError("Resize(learned=True) is not available (the original never implemented it); "
                             "use learned=False")
        self.with_conv = learned
        self.mode = mode

    def forward(self, x: torch.Tensor, scale_factor: float = 1.0) -> torch.Tensor:
        if scale_factor == 1.0:
            return x
        return F.interpolate(x, mode=self.mode, align_corners=False, scale_factor=scale_factor)


class FirstStagePostProcessor(nn.Module):
    """Encode with a frozen pretrained first stage, then project and downsample the latent with residual blocks."""

    def __init__(self,
                 ch_mult: Sequence[int],  # channel multiplier (of n_channels) per residual block / downsampling
                 in_channels: int,  # latent channels of the pretrained first stage
                 pretrained_model: nn.Module | None = None,  # the first stage, built already
                 reshape: bool = False,  # return tokens (B, h*w, C) instead of a map
                 n_channels: int | None = None,  # projection width; None takes the first stage's encoder.ch
                 dropout: float = 0.0,  # dropout inside the residual blocks
                 pretrained_config: Any = None,  # a {target, params} config to build the first stage from
                 ):
        super().__init__()
        if pretrained_config is None:
            if pretrained_model is None:
                raise ValueError("FirstStagePostProcessor needs either pretrained_model or pretrained_config; "
                                 "got neither")
            self.pretrained_model = pretrained_model
        else:
            self.instantiate_pretrained(pretrained_config)

        self.do_reshape = reshape
        if n_channels is None:
            n_channels = self.pretrained_model.encoder.ch

        self.proj_norm = Normalize(in_channels, num_groups=in_channels // 2)
        self.proj = nn.Conv2d(in_channels, n_channels, kernel_size=3, stride=1, padding=1)

        blocks = []
        downs = []
        ch_in = n_channels
        for m in ch_mult:
            blocks.append(ResnetBlock(in_channels=ch_in, out_channels=m * n_channels, dropout=dropout))
            ch_in = m * n_channels
            downs.append(Downsample(ch_in, with_conv=False))
        self.model = nn.ModuleList(blocks)
        self.downsampler = nn.ModuleList(downs)

    def instantiate_pretrained(self, config: Any) -> None:
        from ldm.util import instantiate_from_config

        model = instantiate_from_config(config)
        self.pretrained_model = model.eval()
        for param in self.pretrained_model.parameters():
            param.requires_grad = False

    @torch.no_grad()
    def encode_with_pretrained(self, x: torch.Tensor) -> torch.Tensor:
        from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

        c = self.pretrained_model.encode(x)
        if isinstance(c, DiagonalGaussianDistribution):
            c = c.mode()
        return c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encode_with_pretrained(x)  # (B, in_channels, h, w)
        z = nonlinearity(self.proj(self.proj_norm(z)))  # (B, n_channels, h, w)
        for submodel, downmodel in zip(self.model, self.downsampler):
            z = downmodel(submodel(z, temb=None))  # (B, m * n_channels, h / 2, w / 2)
        if self.do_reshape:
            z = rearrange(z, "b c h w -> b (h w) c")  # (B, h'w', C)
        return z
