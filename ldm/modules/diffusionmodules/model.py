"""Convolutional building blocks of the first-stage autoencoders and of the pixel-space DDPM U-Net.

The encoder/decoder pair is the one of the latent diffusion first stages (Rombach et al., "High-Resolution
Image Synthesis with Latent Diffusion Models", CVPR 2022), itself taken from VQGAN (Esser et al.,
"Taming Transformers for High-Resolution Image Synthesis", CVPR 2021) and the DDPM U-Net (Ho et al.,
"Denoising Diffusion Probabilistic Models", NeurIPS 2020). Module names follow the original code, so
the released checkpoints load with ``strict=True``.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.attention import LinearAttention, SpatialSelfAttention

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


class AttnBlock(SpatialSelfAttention):
    """Single-head spatial self-attention over all ``H * W`` positions, with a residual connection."""


class LinAttnBlock(LinearAttention):
    """Linear attention with one head as wide as the input, usable wherever `AttnBlock` is."""

    def __init__(self,
                 in_channels: int,  # channels in and out (also the head width)
                 ):
        super().__init__(dim=in_channels, heads=1, dim_head=in_channels)


def make_attn(in_channels: int, attn_type: str = "vanilla") -> nn.Module:
    """The attention block of type ``"vanilla"`` (`AttnBlock`), ``"linear"`` (`LinAttnBlock`) or ``"none"``."""
    if attn_type not in ATTN_TYPES:
        raise ValueError(f"attn_type must be one of {', '.join(ATTN_TYPES)}; got {attn_type!r}")
    logger.debug("making attention of type %r with %d in_channels", attn_type, in_channels)
    if attn_type == "vanilla":
        return AttnBlock(in_channels)
    if attn_type == "none":
        return nn.Identity()
    return LinAttnBlock(in_channels)


class _ResolutionLevels(nn.Module):
    """What `Model`, `Encoder` and `Decoder` share: the widths and levels the path builders below read."""

    def __init__(self,
                 ch: int,  # base channel count
                 temb_ch: int,  # width of the timestep embedding; 0 for none
                 ch_mult: Sequence[int],  # channel multiplier per resolution level
                 num_res_blocks: int,  # residual blocks per level
                 resolution: int,  # image resolution, to place the attention blocks
                 in_channels: int | None,  # input channels
                 ):
        super().__init__()
        self.ch = ch
        self.temb_ch = temb_ch
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels


def _level(owner: _ResolutionLevels, block_in: int, block_out: int, skip_ins: Sequence[int], dropout: float,
           with_attn: bool, attn_type: str) -> tuple[nn.Module, int]:
    """One resolution level: ``len(skip_ins)`` residual blocks to ``block_out`` channels (``level.block``), block
    ``i`` also taking ``skip_ins[i]`` channels of a skip connection, each followed by attention when ``with_attn``
    (``level.attn``). Returns the level and its output channels."""
    level = nn.Module()
    level.block = nn.ModuleList()
    level.attn = nn.ModuleList()
    for skip_in in skip_ins:
        level.block.append(ResnetBlock(in_channels=block_in + skip_in, out_channels=block_out,
                                       temb_channels=owner.temb_ch, dropout=dropout))
        block_in = block_out
        if with_attn:
            level.attn.append(make_attn(block_in, attn_type=attn_type))
    return level, block_in


def _down_path(owner: _ResolutionLevels, ch_mult: Sequence[int], attn_resolutions: Sequence[int], dropout: float,
               resamp_with_conv: bool, attn_type: str) -> tuple[int, int]:
    """Build ``owner.down`` (resolution levels of residual blocks, attention, downsampling) and ``owner.mid``.

    Returns the channel count and spatial resolution at the bottom.
    """
    curr_res = owner.resolution
    in_ch_mult = (1,) + tuple(ch_mult)
    owner.down = nn.ModuleList()
    block_in = owner.ch
    for i_level in range(owner.num_resolutions):
        down, block_in = _level(owner, owner.ch * in_ch_mult[i_level], owner.ch * ch_mult[i_level],
                                [0] * owner.num_res_blocks, dropout, curr_res in attn_resolutions, attn_type)
        if i_level != owner.num_resolutions - 1:
            down.downsample = Downsample(block_in, resamp_with_conv)
            curr_res = curr_res // 2
        owner.down.append(down)
    _mid(owner, block_in, dropout, attn_type)
    return block_in, curr_res


def _mid(owner: _ResolutionLevels, block_in: int, dropout: float, attn_type: str) -> None:
    """Build ``owner.mid``: residual block, attention, residual block."""
    owner.mid = nn.Module()
    owner.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=owner.temb_ch,
                                    dropout=dropout)
    owner.mid.attn_1 = make_attn(block_in, attn_type=attn_type)
    owner.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=owner.temb_ch,
                                    dropout=dropout)


def _run_down(owner: _ResolutionLevels, x: torch.Tensor, temb: torch.Tensor | None) -> list[torch.Tensor]:
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


def _run_mid(owner: _ResolutionLevels, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
    h = owner.mid.block_1(h, temb)
    h = owner.mid.attn_1(h)
    return owner.mid.block_2(h, temb)


def _up_path(owner: _ResolutionLevels, ch_mult: Sequence[int], attn_resolutions: Sequence[int], dropout: float,
             resamp_with_conv: bool, block_in: int, curr_res: int, attn_type: str, skip: bool) -> int:
    """Build ``owner.up`` (resolution levels of ``num_res_blocks + 1`` residual blocks, attention, upsampling).

    With ``skip`` each residual block also takes the matching feature map of the down path (the U-Net's
    skip connections). Returns the channel count at the top.
    """
    in_ch_mult = (1,) + tuple(ch_mult)
    owner.up = nn.ModuleList()
    for i_level in reversed(range(owner.num_resolutions)):
        if skip:  # the down path's feature maps: one per residual block, then the level's input
            skip_ins = [owner.ch * ch_mult[i_level]] * owner.num_res_blocks + [owner.ch * in_ch_mult[i_level]]
        else:
            skip_ins = [0] * (owner.num_res_blocks + 1)
        up, block_in = _level(owner, block_in, owner.ch * ch_mult[i_level], skip_ins, dropout,
                              curr_res in attn_resolutions, attn_type)
        if i_level != 0:
            up.upsample = Upsample(block_in, resamp_with_conv)
            curr_res = curr_res * 2
        owner.up.insert(0, up)  # prepend: up[i] is the level of down[i]
    return block_in


def _run_up(owner: _ResolutionLevels, h: torch.Tensor, temb: torch.Tensor | None,
            hs: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Run ``owner.up``; with ``hs`` (the down path's feature maps) each block first takes the last of them."""
    for i_level in reversed(range(owner.num_resolutions)):
        for i_block in range(owner.num_res_blocks + 1):
            if hs is not None:
                h = torch.cat([h, hs.pop()], dim=1)  # (B, C + C_skip, H, W)
            h = owner.up[i_level].block[i_block](h, temb)
            if len(owner.up[i_level].attn) > 0:
                h = owner.up[i_level].attn[i_block](h)
        if i_level != 0:
            h = owner.up[i_level].upsample(h)  # (B, C, 2H, 2W)
    return h


class Model(_ResolutionLevels):
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
        super().__init__(ch, 4 * ch, ch_mult, num_res_blocks, resolution, in_channels)
        if use_linear_attn:
            attn_type = "linear"

        self.use_timestep = use_timestep
        if self.use_timestep:
            self.temb = nn.Module()
            self.temb.dense = nn.ModuleList([nn.Linear(self.ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])

        self.conv_in = nn.Conv2d(in_channels, self.ch, kernel_size=3, stride=1, padding=1)
        block_in, curr_res = _down_path(self, ch_mult, attn_resolutions, dropout, resamp_with_conv, attn_type)
        block_in = _up_path(self, ch_mult, attn_resolutions, dropout, resamp_with_conv, block_in, curr_res,
                            attn_type, skip=True)
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
        h = _run_up(self, h, temb, hs)  # (B, ch * ch_mult[0], H, W)
        return self.conv_out(nonlinearity(self.norm_out(h)))  # (B, out_ch, H, W)

    def get_last_layer(self) -> torch.Tensor:
        return self.conv_out.weight


class Encoder(_ResolutionLevels):
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
        super().__init__(ch, 0, ch_mult, num_res_blocks, resolution, in_channels)
        if use_linear_attn:
            attn_type = "linear"
        self.in_ch_mult = (1,) + tuple(ch_mult)

        self.conv_in = nn.Conv2d(in_channels, self.ch, kernel_size=3, stride=1, padding=1)
        block_in, _ = _down_path(self, ch_mult, attn_resolutions, dropout, resamp_with_conv, attn_type)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, kernel_size=3, stride=1,
                                  padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hs = _run_down(self, x, None)
        h = _run_mid(self, hs[-1], None)  # (B, C, H / 2^(L-1), W / 2^(L-1))
        return self.conv_out(nonlinearity(self.norm_out(h)))  # (B, z or 2z, H / 2^(L-1), W / 2^(L-1))


class Decoder(_ResolutionLevels):
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
        super().__init__(ch, 0, ch_mult, num_res_blocks, resolution, in_channels)
        if use_linear_attn:
            attn_type = "linear"
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out

        block_in = ch * ch_mult[self.num_resolutions - 1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, z_channels, curr_res, curr_res)
        logger.debug("Working with z of shape %s = %d dimensions.", self.z_shape, math.prod(self.z_shape))

        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        _mid(self, block_in, dropout, attn_type)
        block_in = _up_path(self, ch_mult, attn_resolutions, dropout, resamp_with_conv, block_in, curr_res,
                            attn_type, skip=False)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.last_z_shape = z.shape
        h = self.conv_in(z)  # (B, C, h, w)
        h = _run_mid(self, h, None)
        h = _run_up(self, h, None)  # (B, ch * ch_mult[0], H, W)
        if self.give_pre_end:
            return h  # (B, ch * ch_mult[0], H, W)
        h = self.conv_out(nonlinearity(self.norm_out(h)))  # (B, out_ch, H, W)
        if self.tanh_out:
            h = torch.tanh(h)
        return h

