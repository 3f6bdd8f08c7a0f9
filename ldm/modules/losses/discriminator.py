"""The PatchGAN discriminator of the first-stage adversarial losses.

PatchGAN from pix2pix (Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks",
CVPR 2017), as VQGAN uses it (Esser et al., CVPR 2021) and the latent diffusion first stages inherit it
(Rombach et al., CVPR 2022); ActNorm from Glow (Kingma & Dhariwal, NeurIPS 2018). Keys (``main.*``)
match the original, so the ``loss.discriminator.*`` entries of released checkpoints load.
"""
from __future__ import annotations

import torch
from torch import nn

DISC_KERNEL = 4  # kernel size of every discriminator convolution
DISC_PADDING = 1  # padding of every discriminator convolution
LEAKY_SLOPE = 0.2  # negative slope of the LeakyReLUs
MAX_NF_MULT = 8  # the channel multiplier stops growing at ndf * 8
INIT_STD = 0.02  # std of the DCGAN-style initialization
ACTNORM_EPS = 1e-6  # added to the std in the data-dependent ActNorm initialization


def weights_init(m: nn.Module) -> None:
    """DCGAN initialization: conv weights ~ N(0, 0.02); BatchNorm weights ~ N(1, 0.02), biases 0."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, INIT_STD)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, INIT_STD)
        nn.init.constant_(m.bias.data, 0)


class ActNorm(nn.Module):
    """Per-channel affine normalization initialized from the statistics of the first training batch."""

    def __init__(self,
                 num_features: int,  # channels
                 logdet: bool = False,  # also return the log-determinant of the transform
                 affine: bool = True,  # must be True (kept for the original's signature)
                 allow_reverse_init: bool = False,  # allow the data-dependent init from the reverse direction
                 ):
        if not affine:
            raise ValueError("ActNorm supports affine=True only; got affine=False")
        super().__init__()
        self.logdet = logdet
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.allow_reverse_init = allow_reverse_init
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    def initialize(self, input: torch.Tensor) -> None:  # noqa: A002 - original name
        with torch.no_grad():
            flatten = input.permute(1, 0, 2, 3).contiguous().view(input.shape[1], -1)  # (C, B*H*W)
            mean = flatten.mean(1)[None, :, None, None]  # (1, C, 1, 1)
            std = flatten.std(1)[None, :, None, None]  # (1, C, 1, 1)
            self.loc.data.copy_(-mean)
            self.scale.data.copy_(1 / (std + ACTNORM_EPS))

    def forward(self, input: torch.Tensor, reverse: bool = False):  # noqa: A002 - original name
        if reverse:
            return self.reverse(input)
        squeeze = input.ndim == 2
        if squeeze:
            input = input[:, :, None, None]  # (B, C, 1, 1)
        _, _, height, width = input.shape
        if self.training and self.initialized.item() == 0:
            self.initialize(input)
            self.initialized.fill_(1)
        h = self.scale * (input + self.loc)  # (B, C, H, W)
        if squeeze:
            h = h.squeeze(-1).squeeze(-1)
        if self.logdet:
            log_abs = torch.log(torch.abs(self.scale))
            logdet = height * width * torch.sum(log_abs)
            logdet = logdet * torch.ones(input.shape[0]).to(input)  # (B,)
            return h, logdet
        return h

    def reverse(self, output: torch.Tensor) -> torch.Tensor:
        if self.training and self.initialized.item() == 0:
            if not self.allow_reverse_init:
                raise RuntimeError("Initializing ActNorm in reverse direction is disabled by default. "
                                   "Use allow_reverse_init=True to enable.")
            self.initialize(output)
            self.initialized.fill_(1)
        squeeze = output.ndim == 2
        if squeeze:
            output = output[:, :, None, None]
        h = output / self.scale - self.loc
        if squeeze:
            h = h.squeeze(-1).squeeze(-1)
        return h


class NLayerDiscriminator(nn.Module):
    """PatchGAN: a stack of stride-2 4x4 convolutions giving one real/fake logit per image patch."""

    def __init__(self,
                 input_nc: int = 3,  # input channels
                 ndf: int = 64,  # channels of the first layer
                 n_layers: int = 3,  # number of stride-2 layers after the first
                 use_actnorm: bool = False,  # ActNorm instead of BatchNorm
                 ):
        super().__init__()
        norm_layer = ActNorm if use_actnorm else nn.BatchNorm2d
        use_bias = norm_layer is not nn.BatchNorm2d  # BatchNorm's affine shift makes a conv bias redundant

        kw, padw = DISC_KERNEL, DISC_PADDING

        def conv_norm_act(ch_in: int, ch_out: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(ch_in, ch_out, kernel_size=kw, stride=stride, padding=padw, bias=use_bias),
                    norm_layer(ch_out),
                    nn.LeakyReLU(LEAKY_SLOPE, True)]

        sequence: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
                                     nn.LeakyReLU(LEAKY_SLOPE, True)]
        nf_mult = 1
        for n in range(1, n_layers):  # gradually increase the number of filters
            nf_mult_prev, nf_mult = nf_mult, min(2 ** n, MAX_NF_MULT)
            sequence += conv_norm_act(ndf * nf_mult_prev, ndf * nf_mult, stride=2)
        nf_mult_prev, nf_mult = nf_mult, min(2 ** n_layers, MAX_NF_MULT)
        sequence += conv_norm_act(ndf * nf_mult_prev, ndf * nf_mult, stride=1)
        sequence += [nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw)]  # one logit per patch
        self.main = nn.Sequential(*sequence)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - original name
        return self.main(input)  # (B, 1, h, w) patch logits
