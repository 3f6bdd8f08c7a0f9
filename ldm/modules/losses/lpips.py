"""LPIPS, the learned perceptual image patch similarity on VGG16 features.

Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018,
on the VGG16 network of Simonyan & Zisserman, ICLR 2015; in the form taming-transformers ships it and
the latent diffusion first-stage losses use it (Rombach et al., CVPR 2022). Module names follow the
original, so the ``loss.perceptual_loss.*`` entries of the released checkpoints load as they are.

Weights, never downloaded:

* the VGG16 ImageNet weights of torchvision, ``vgg16-397923af.pth``: ``vgg_path`` if given, else
  ``$LDM_VGG16_PATH``, else the torch hub cache (``<torch.hub.get_dir()>/checkpoints/``);
* the linear heads, ``vgg.pth``: ``lpips_path`` if given, else ``$LDM_LPIPS_PATH``, else
  ``$XDG_CACHE_HOME/ldm/lpips/vgg.pth`` (``~/.cache/ldm/lpips/vgg.pth``), else where taming-transformers
  kept it (``./taming/modules/autoencoder/lpips/vgg.pth``), else inside an installed ``lpips`` package.

When are they read? ``LPIPS(pretrained=True)`` (the default, as in the original) reads them the first time
it computes a distance, or when `LPIPS.load_pretrained` is called, and only the parts that no state dict
has supplied by then. So a first stage built to receive a checkpoint (which carries
``loss.perceptual_loss.*``), or built on the meta device to look at its keys, or trained with
``perceptual_weight=0``, never touches these files. ``pretrained=False`` never reads them.
A missing file raises FileNotFoundError naming the file, where it was looked for and where to get it.
Both are read by `ldm.checkpoint.load_state_dict`, which runs no code from the file.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from collections import namedtuple
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ldm.checkpoint import load_state_dict

logger = logging.getLogger(__name__)

VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_ENV = "LDM_VGG16_PATH"
LPIPS_FILENAME = "vgg.pth"
LPIPS_URLS = (
    "https://heibox.uni-heidelberg.de/f/607503859c864bc1b30b/?dl=1 (taming-transformers)",
    "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
)
LPIPS_ENV = "LDM_LPIPS_PATH"

#: torchvision's VGG16 ``features`` (configuration "D"): conv widths, "M" for 2x2 max pooling.
VGG16_FEATURES_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
#: Index ranges of ``features`` ending at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
VGG16_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
LPIPS_CHANNELS = (64, 128, 256, 512, 512)  # channels of the five VGG16 feature maps
NORMALIZE_EPS = 1e-10  # added to the channel norm in normalize_tensor

VggOutputs = namedtuple("VggOutputs", ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"])


def _vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` with the same layer indices, built without the classifier."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in VGG16_FEATURES_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = nn.Conv2d(in_ch, v, kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
            nn.init.constant_(conv.bias, 0)
            layers += [conv, nn.ReLU(inplace=True)]
            in_ch = v
    return nn.Sequential(*layers)


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _vgg16_candidates(explicit: str | os.PathLike | None) -> tuple[list[Path], bool]:
    """Paths to try for the VGG16 weights, and whether they were named explicitly (then only they count)."""
    if explicit is not None:
        return [Path(explicit)], True
    if os.environ.get(VGG16_ENV):
        return [Path(os.environ[VGG16_ENV])], True
    return [Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME], False


def _lpips_candidates(explicit: str | os.PathLike | None) -> tuple[list[Path], bool]:
    """Paths to try for the LPIPS linear heads, and whether they were named explicitly."""
    if explicit is not None:
        return [Path(explicit)], True
    if os.environ.get(LPIPS_ENV):
        return [Path(os.environ[LPIPS_ENV])], True
    paths = [_cache_home() / "ldm" / "lpips" / LPIPS_FILENAME,
             Path("taming") / "modules" / "autoencoder" / "lpips" / LPIPS_FILENAME]
    spec = importlib.util.find_spec("lpips")  # the pip package `lpips` ships the same heads
    if spec is not None and spec.submodule_search_locations:
        paths.append(Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / LPIPS_FILENAME)
    return paths, False


def _find(what: str, candidates: list[Path], explicit: bool, env: str, how: str) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    where = ", ".join(str(p) for p in candidates)
    hint = "the path given" if explicit else f"the default locations (set ${env} or pass the path to override)"
    raise FileNotFoundError(f"{what} not found: looked in {hint}: {where}. {how}")


def load_vgg16_features(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The torchvision VGG16 ImageNet ``features.*`` weights from a local file, keyed ``"<index>.weight"``."""
    candidates, explicit = _vgg16_candidates(path)
    found = _find("VGG16 ImageNet weights (" + VGG16_FILENAME + ")", candidates, explicit, VGG16_ENV,
                  f"Get them from {VGG16_URL} into {Path(torch.hub.get_dir()) / 'checkpoints'} "
                  f"(or anywhere, then set ${VGG16_ENV} to the file).")
    sd = dict(load_state_dict(found))
    features = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    if not features:  # a file holding the features alone
        features = sd
    return features


def load_lpips_heads(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The LPIPS linear-head weights (``lin0..lin4.model.1.weight``) from a local ``vgg.pth``."""
    candidates, explicit = _lpips_candidates(path)
    found = _find("LPIPS linear-head weights (" + LPIPS_FILENAME + ")", candidates, explicit, LPIPS_ENV,
                  f"Get vgg.pth from {' or '.join(LPIPS_URLS)} into {_cache_home() / 'ldm' / 'lpips'} "
                  f"(or anywhere, then set ${LPIPS_ENV} to the file).")
    return dict(load_state_dict(found))


def _copy_into(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy every entry of ``module.state_dict()`` from ``sd``; raise if one is missing or mis-shaped."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} expected entries (first: {missing[:3]})")
    wrong = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"{source}: shapes differ for {wrong[:3]} "
                         f"(file {[tuple(sd[k].shape) for k in wrong[:3]]}, model {[tuple(own[k].shape) for k in wrong[:3]]})")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(sd[k])


class vgg16(nn.Module):  # noqa: N801 - the original's name
    """VGG16 ``features`` cut into five slices, returning the relu1_2 ... relu5_3 activations."""

    def __init__(self,
                 requires_grad: bool = False,  # train the VGG weights
                 pretrained: bool = True,  # load the ImageNet weights now (from vgg_path or the defaults)
                 vgg_path: str | os.PathLike | None = None,  # the torchvision vgg16-397923af.pth file
                 ):
        super().__init__()
        features = _vgg16_features()
        if pretrained:
            weights = load_vgg16_features(vgg_path)
            _copy_into(features, weights, "VGG16 weights")
        self.N_slices = len(VGG16_SLICES)
        for i, (start, stop) in enumerate(VGG16_SLICES, start=1):
            part = nn.Sequential()
            for x in range(start, stop):
                part.add_module(str(x), features[x])
            setattr(self, f"slice{i}", part)
        if not requires_grad:
            for param in self.parameters():
                param.requires_grad = False

    def load_features(self, features: Mapping[str, torch.Tensor], source: str = "VGG16 weights") -> None:
        """Copy torchvision ``features`` weights (keys ``"<index>.weight"``/``"<index>.bias"``) into the slices."""
        mapped = {}
        for i, (start, stop) in enumerate(VGG16_SLICES, start=1):
            for k, v in features.items():
                idx = k.split(".", 1)[0]
                if idx.isdigit() and start <= int(idx) < stop:
                    mapped[f"slice{i}.{k}"] = v
        _copy_into(self, mapped, source)

    def forward(self, X: torch.Tensor) -> VggOutputs:  # noqa: N803 - the original's name
        h_relu1_2 = self.slice1(X)  # (B, 64, H, W)
        h_relu2_2 = self.slice2(h_relu1_2)  # (B, 128, H/2, W/2)
        h_relu3_3 = self.slice3(h_relu2_2)  # (B, 256, H/4, W/4)
        h_relu4_3 = self.slice4(h_relu3_3)  # (B, 512, H/8, W/8)
        h_relu5_3 = self.slice5(h_relu4_3)  # (B, 512, H/16, W/16)
        return VggOutputs(h_relu1_2, h_relu2_2, h_relu3_3, h_relu4_3, h_relu5_3)


class ScalingLayer(nn.Module):
    """Shift and scale [-1, 1] images to the input statistics LPIPS was calibrated with."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-.030, -.088, -.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([.458, .448, .450])[None, :, None, None])

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return (inp - self.shift) / self.scale  # (B, 3, H, W)


class NetLinLayer(nn.Module):
    """A 1x1 convolution without bias (optionally after dropout) weighting the channels of a feature map."""

    def __init__(self,
                 chn_in: int,  # input channels
                 chn_out: int = 1,  # output channels
                 use_dropout: bool = False,  # dropout before the convolution (active in train mode)
                 ):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout()] if use_dropout else []
        layers += [nn.Conv2d(chn_in, chn_out, 1, stride=1, padding=0, bias=False)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def normalize_tensor(x: torch.Tensor, eps: float = NORMALIZE_EPS) -> torch.Tensor:
    """Unit-normalize along channels: ``x / (|x|_2 + eps)``."""
    norm_factor = torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True))  # (B, 1, H, W)
    return x / (norm_factor + eps)


def spatial_average(x: torch.Tensor, keepdim: bool = True) -> torch.Tensor:
    return x.mean([2, 3], keepdim=keepdim)


def _keys_supplied(state_dict: Mapping[str, Any], prefix: str, keys: Iterable[str]) -> bool:
    return all(prefix + k in state_dict for k in keys)


def _note_supplied_weights(module: "LPIPS", state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
    # load_state_dict pre-hook: the parts whose every entry this state dict holds need no file any more
    if _keys_supplied(state_dict, prefix, ("net." + k for k in module.net.state_dict())):
        module.pending_pretrained.discard("net")
    if _keys_supplied(state_dict, prefix, (f"lin{i}.model.1.weight" for i in range(len(module.chns)))):
        module.pending_pretrained.discard("lin")


class LPIPS(nn.Module):
    """Learned perceptual metric: per-image distance ``(B, 1, 1, 1)`` between two [-1, 1] image batches.

    The weights are frozen. See the module docstring for where and when the pretrained weights are read.
    """

    def __init__(self,
                 use_dropout: bool = True,  # dropout before the linear heads (active in train mode, as originally)
                 pretrained: bool = True,  # read the VGG16 and linear-head weights from local files when first needed
                 vgg_path: str | os.PathLike | None = None,  # the VGG16 file; None searches $LDM_VGG16_PATH, torch hub
                 lpips_path: str | os.PathLike | None = None,  # the vgg.pth heads; None searches $LDM_LPIPS_PATH, caches
                 ):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.chns = list(LPIPS_CHANNELS)
        self.net = vgg16(pretrained=False, requires_grad=False)
        self.lin0 = NetLinLayer(self.chns[0], use_dropout=use_dropout)
        self.lin1 = NetLinLayer(self.chns[1], use_dropout=use_dropout)
        self.lin2 = NetLinLayer(self.chns[2], use_dropout=use_dropout)
        self.lin3 = NetLinLayer(self.chns[3], use_dropout=use_dropout)
        self.lin4 = NetLinLayer(self.chns[4], use_dropout=use_dropout)
        self.pretrained = pretrained
        self.vgg_path = vgg_path
        self.lpips_path = lpips_path
        #: parts ("net", "lin") still to be read from files before the first distance
        self.pending_pretrained: set[str] = {"net", "lin"} if pretrained else set()
        self.register_load_state_dict_pre_hook(_note_supplied_weights)
        for param in self.parameters():
            param.requires_grad = False

    @property
    def lins(self) -> list[NetLinLayer]:
        return [self.lin0, self.lin1, self.lin2, self.lin3, self.lin4]

    def load_pretrained(self) -> None:
        """Read the pretrained weights that no state dict has supplied yet from the local files."""
        if not self.pretrained:
            return
        # may run inside torch.inference_mode (a validation pass first); the weights must stay normal tensors
        with torch.inference_mode(False), torch.no_grad():
            if "net" in self.pending_pretrained:
                self.net.load_features(load_vgg16_features(self.vgg_path))
                self.pending_pretrained.discard("net")
                logger.info("LPIPS: loaded the VGG16 ImageNet weights")
            if "lin" in self.pending_pretrained:
                heads = load_lpips_heads(self.lpips_path)
                for i, lin in enumerate(self.lins):
                    _copy_into(lin, {k[len(f"lin{i}."):]: v for k, v in heads.items() if k.startswith(f"lin{i}.")},
                               f"LPIPS heads, lin{i}")
                self.pending_pretrained.discard("lin")
                logger.info("LPIPS: loaded the linear heads")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 - original name
        if self.pending_pretrained:
            self.load_pretrained()
        outs0 = self.net(self.scaling_layer(input))
        outs1 = self.net(self.scaling_layer(target))
        val = None
        for kk, lin in enumerate(self.lins):
            diff = (normalize_tensor(outs0[kk]) - normalize_tensor(outs1[kk])) ** 2  # (B, C_k, H_k, W_k)
            res = spatial_average(lin.model(diff), keepdim=True)  # (B, 1, 1, 1)
            val = res if val is None else val + res
        return val  # (B, 1, 1, 1)
