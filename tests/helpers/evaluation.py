"""Evaluation inputs made here: a stand-in Inception weights file in torch-fidelity's format (random weights,
nothing downloaded), a cheap stand-in for its forward pass, image sets of synthetic shapes written as PNG
folders, and scripts/evaluate.py run without cache or progress bar."""
from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

from helpers.scripts import load_script
from ldm.data.synthetic import SyntheticShapesBase


def write_standin_inception(path: Path, seed: int = 0) -> Path:
    """torch-fidelity's FeatureExtractorInceptionV3 state dict with random He-initialized weights."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None), \
            mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}):
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("conv.weight"):  # keeps activations from vanishing through the 90-odd layers
            value = torch.randn(value.shape, generator=g) * math.sqrt(2.0 / value[0].numel())
        elif key == "fc.weight":
            value = torch.randn(value.shape, generator=g) * 3.0 / math.sqrt(value.shape[1])
        state[key] = value.clone()
    torch.save(state, path)
    return path


def shapes_images(n: int, split: str, seed: int, size: int = 16) -> np.ndarray:
    """``n`` images of the synthetic shapes dataset as (n, size, size, 3) uint8."""
    ds = SyntheticShapesBase(size=size, num_samples=n, split=split, seed=seed)
    return np.stack([((ds[i]["image"] + 1) * 127.5).round().astype(np.uint8) for i in range(n)])


def write_folder(folder: Path, images: np.ndarray, mode: str = "RGB") -> Path:
    """``images`` saved as 0000.png, 0001.png, ... in ``folder`` (converted to PIL mode ``mode``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).convert(mode).save(folder / f"{i:04d}.png")
    return folder


class TinyFeatures(torch.nn.Module):
    """A cheap stand-in for the Inception forward pass: fixed random projections of the pixels."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.pool = torch.randn(3 * 16 * 16, 2048, generator=g) / 16
        self.fc = torch.randn(2048, 1008, generator=g) / 45

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.nn.functional.interpolate(x.float() / 255, size=(16, 16), mode="area").flatten(1)  # (B, 768)
        pool = torch.relu(x @ self.pool)  # (B, 2048)
        return pool, pool @ self.fc  # (B, 2048), (B, 1008)


def run_evaluate(*argv: str):
    """scripts/evaluate.py's main on ``argv``, without the feature cache or a progress bar."""
    return load_script("evaluate").main(list(argv) + ["--no_cache", "--no_progress"])
