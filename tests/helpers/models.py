"""Tiny diffusion models built in code: a pixel DDPM on 3 x 8 x 8 images, a pixel-space LatentDiffusion
(identity first stage) conditioned on a class, a caption (through a stand-in text encoder), a concatenated
image or nothing, and the split-input parameters of its patch-wise processing."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ldm.models.diffusion.ddpm import DDPM, LatentDiffusion

TINY_UNET = {
    "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "params": {"image_size": 8, "in_channels": 3, "out_channels": 3, "model_channels": 32,
               "attention_resolutions": [], "num_res_blocks": 1, "channel_mult": [1], "num_heads": 1},
}


def tiny_ddpm(**kwargs) -> DDPM:
    """A pixel DDPM on 3 x 8 x 8 images, 20 steps (``kwargs`` override its arguments)."""
    params = dict(unet_config=copy.deepcopy(TINY_UNET), timesteps=20, image_size=8, channels=3, log_every_t=5)
    params.update(kwargs)
    return DDPM(**params)


N_CLASSES = 5
CONTEXT_DIM = 8


class CaptionStub(nn.Module):
    """A text encoder for tests: a caption becomes one token holding its length (0 for "")."""

    def forward(self, captions):
        lengths = torch.tensor([float(len(c)) for c in captions])
        return lengths.view(-1, 1, 1).expand(-1, 1, CONTEXT_DIM).contiguous()


def unet_config(in_channels=3, context_dim=None):
    """The config of a one-level U-Net on 8 x 8 inputs, with cross-attention when ``context_dim`` is given."""
    params = {"image_size": 8, "in_channels": in_channels, "out_channels": 3, "model_channels": 32,
              "attention_resolutions": [], "num_res_blocks": 1, "channel_mult": [1], "num_heads": 1}
    if context_dim is not None:
        params.update(attention_resolutions=[1], use_spatial_transformer=True, context_dim=context_dim,
                      transformer_depth=1)
    return {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": params}


def tiny_ldm(kind="class", **kwargs) -> LatentDiffusion:
    """A pixel-space LatentDiffusion (identity first stage) on 3 x 8 x 8 images, 20 steps."""
    params = dict(first_stage_config={"target": "ldm.models.autoencoder.IdentityFirstStage"},
                  timesteps=20, image_size=8, channels=3, log_every_t=5, first_stage_key="image", use_ema=False)
    if kind == "class":
        params.update(unet_config=unet_config(context_dim=CONTEXT_DIM), conditioning_key="crossattn",
                      cond_stage_key="class_label", cond_stage_trainable=True,
                      cond_stage_config={"target": "ldm.modules.encoders.modules.ClassEmbedder",
                                         "params": {"embed_dim": CONTEXT_DIM, "n_classes": N_CLASSES,
                                                    "key": "class_label"}})
    elif kind == "caption":
        params.update(unet_config=unet_config(context_dim=CONTEXT_DIM), conditioning_key="crossattn",
                      cond_stage_key="caption", cond_stage_config={"target": "helpers.models.CaptionStub"})
    elif kind == "concat":
        params.update(unet_config=unet_config(in_channels=6), conditioning_key="concat", cond_stage_key="image",
                      cond_stage_config="__is_first_stage__")
    else:
        params.update(unet_config=unet_config(), cond_stage_config="__is_unconditional__", cond_stage_key=None)
    params.update(kwargs)
    m = LatentDiffusion(**params)
    with torch.no_grad():  # the output layer starts at zero; make the network's output depend on its input
        out = m.model.diffusion_model.out[-1]
        out.weight.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(0))
    return m


def split_params(ks, stride, vqf=1):
    """``split_input_params`` for patch-wise processing in crops of size ``ks`` every ``stride``."""
    return {"ks": ks, "stride": stride, "vqf": vqf, "patch_distributed_vq": True, "clip_min_weight": 0.01,
            "clip_max_weight": 0.5, "clip_min_tie_weight": 0.01, "clip_max_tie_weight": 0.5, "tie_braker": True}
