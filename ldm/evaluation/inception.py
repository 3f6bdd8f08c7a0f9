"""The Inception-v3 that FID (Heusel et al. 2017) and the Inception Score (Salimans et al. 2016) are defined
on: the TensorFlow graph of 2015-12-05, as ported to PyTorch by torch-fidelity (Obukhov et al.), whose
outputs match the TensorFlow original. This module finds its weights file locally (nothing is
downloaded), checks it, and extracts pool (2048) and logit features from uint8 image batches, and the
spatial features of sFID (Nash et al. 2021, as ADM's evaluator computes it: the first 7 channels of the
TF graph's ``mixed_6/conv``, 17 x 17 x 7 = 2023 values per image).

The weights file ``weights-inception-2015-12-05-6726825d.pth`` is looked for in this order: the path
given (``--inception_weights``), ``$LDM_INCEPTION_WEIGHTS``, and torch's hub cache
(``$TORCH_HOME/hub/checkpoints/``, where torch-fidelity itself would put it).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from typing import Any
from pathlib import Path

import torch
from tqdm import tqdm

from ldm.checkpoint import load_state_dict

logger = logging.getLogger(__name__)

#: The file name torch-fidelity publishes the weights under.
INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
#: Where to download it by hand (torch-fidelity's release).
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILENAME
#: Environment variable naming the weights file.
INCEPTION_ENV = "LDM_INCEPTION_WEIGHTS"
#: torch-fidelity's name of the extractor, and the features FID/KID/precision-recall and IS use.
EXTRACTOR_NAME = "inception-v3-compat"
POOL_FEATURES = "2048"
LOGIT_FEATURES = "logits_unbiased"
#: Shape of the final layer in the weights file (1008 TF classes on 2048 pool features).
FC_SHAPE = (1008, 2048)
#: sFID's features, ADM's ``mixed_6/conv:0`` (the 1x1 branch of the TF graph's seventh mixed block, whose
#: port is torch-fidelity's ``Mixed_6d.branch1x1``: its ReLU output), first ``SPATIAL_CHANNELS`` channels,
#: flattened in TensorFlow's height, width, channel order as ADM's evaluator does.
SPATIAL_FEATURES = "mixed_6_conv"
SPATIAL_MODULE = "Mixed_6d.branch1x1"
SPATIAL_CHANNELS = 7
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17


def hub_weights_path() -> Path:
    """Where torch's hub cache would hold the Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: ``path``, else ``$LDM_INCEPTION_WEIGHTS``, else torch's hub cache.

    FileNotFoundError names the file, every place looked in, and where to get it.
    """
    how = (f"Download {INCEPTION_FILENAME} from {INCEPTION_URL} and pass --inception_weights PATH, set "
           f"${INCEPTION_ENV}, or put it in {hub_weights_path().parent}/.")
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"Inception weights (--inception_weights) not found: {p}. {how}")
        return p
    env = os.environ.get(INCEPTION_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise FileNotFoundError(f"Inception weights (${INCEPTION_ENV}) not found: {p}. {how}")
        return p
    hub = hub_weights_path()
    if hub.is_file():
        return hub
    raise FileNotFoundError(f"Inception weights {INCEPTION_FILENAME} not found: looked at --inception_weights "
                            f"(not given), ${INCEPTION_ENV} (not set) and {hub}. {how}")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_inception_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The Inception state dict in ``path``, read by `ldm.checkpoint.load_state_dict` (no code from the file
    runs); ValueError unless it is a plain state dict of tensors with Inception's 1008 x 2048 final layer."""
    try:
        state = load_state_dict(path)
    except Exception as err:  # a pickle with globals, a truncated file, not a torch file at all
        raise ValueError(f"Inception weights {path} cannot be read as a plain state dict of tensors: {err}") from err
    if "fc.weight" not in state:
        raise ValueError(f"Inception weights {path} are not torch-fidelity's Inception-v3 state dict "
                         f"(no 'fc.weight'; expected {INCEPTION_FILENAME})")
    if tuple(state["fc.weight"].shape) != FC_SHAPE:
        raise ValueError(f"Inception weights {path}: fc.weight has shape {tuple(state['fc.weight'].shape)}, "
                         f"expected {FC_SHAPE} ({INCEPTION_FILENAME})")
    return state


def check_inception_weights(path: str | os.PathLike) -> None:
    """ValueError unless ``path`` holds Inception's weights (`read_inception_weights`); checked before any
    feature is extracted."""
    read_inception_weights(path)


class _TorchLoadingFrom:
    """The ``torch`` that torch-fidelity's Inception constructor sees while it is built: its ``torch.load``
    of the weights file returns the state dict read by the project's loader, everything else is torch."""

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        self.state_dict = state_dict  # what the constructor's torch.load returns

    def load(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return self.state_dict

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def build_fidelity_inception(weights: str | os.PathLike, layers: list[str]) -> torch.nn.Module:
    """torch-fidelity's Inception-v3 with the weights in ``weights``, read through `read_inception_weights`.

    Its constructor reads the file itself with torch's unrestricted unpickler (``weights_only=False``), which
    could run code from it; here that call is answered with the state dict the project's loader has read."""
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    state_dict = read_inception_weights(weights)
    fidelity.torch = _TorchLoadingFrom(state_dict)
    try:
        return fidelity.FeatureExtractorInceptionV3(EXTRACTOR_NAME, layers, feature_extractor_weights_path=str(weights),
                                                    verbose=False)
    finally:
        fidelity.torch = torch


class InceptionFeatures:
    """torch-fidelity's Inception-v3 on ``device``, built on first use; ``key`` identifies it for caches."""

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 64, layers: tuple[str, ...] = (POOL_FEATURES, LOGIT_FEATURES)):
        self.weights = find_inception_weights(weights)
        check_inception_weights(self.weights)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.layers = tuple(layers)
        self.key = f"{EXTRACTOR_NAME}-{file_sha256(self.weights)[:16]}"
        self._model: torch.nn.Module | None = None

    @property
    def fidelity_layers(self) -> list[str]:
        """The layers torch-fidelity's forward returns (the spatial features are taken by a hook on the way)."""
        return [layer for layer in self.layers if layer != SPATIAL_FEATURES] or [POOL_FEATURES]

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._model = build_fidelity_inception(self.weights, self.fidelity_layers).to(self.device).eval()
        return self._model

    @torch.no_grad()
    def __call__(self, batches: Iterable[torch.Tensor], total: int, desc: str = "Inception features",
                 progress: bool = True) -> dict[str, torch.Tensor]:
        """Features ``{layer: (N, D) float32}`` of uint8 ``(B, 3, H, W)`` batches (``total`` images)."""
        out: dict[str, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        hook = None
        if SPATIAL_FEATURES in self.layers:
            def take_spatial(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
                # (B, 192, 17, 17) -> the first 7 channels, flattened as TF's (B, 17, 17, 7)
                out[SPATIAL_FEATURES].append(output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1).float().cpu())

            hook = self.model.get_submodule(SPATIAL_MODULE).register_forward_hook(take_spatial)
        try:
            with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
                for batch in batches:
                    features = self.model(batch.to(self.device))
                    for layer, value in zip(self.fidelity_layers, features):
                        if layer in out:
                            out[layer].append(value.float().cpu())
                    bar.update(batch.shape[0])
        finally:
            if hook is not None:
                hook.remove()
        return {layer: torch.cat(values) for layer, values in out.items()}
