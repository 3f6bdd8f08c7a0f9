"""DINOv2 features (Oquab et al. 2023) for a Frechet distance, FD_DINOv2 (Stein et al. 2023: a feature space
that ranks generative models closer to human judgement than Inception's), from local files only.

torch-fidelity 0.4.0 ships a DINOv2 extractor (``FeatureExtractorDinoV2``), but it builds the network only
with ``torch.hub.load("facebookresearch/dinov2", ...)``, which fetches the model code from GitHub and the
weights from Meta's servers; given a local weights path it raises ``NotImplementedError``. So the network
is built here from a local copy of the same weights in the transformers format (``Dinov2Model``; the
Hugging Face repositories ``facebook/dinov2-{small,base,large,giant}`` hold them) and run inside
torch-fidelity's extractor: the preprocessing (TF1-compatible bilinear resize to 224 x 224, ImageNet
mean and std) and the feature (the CLS token after the final layer norm, what the torch.hub model
returns) are torch-fidelity's.

The weights folder is looked for in this order: ``--dinov2_weights``, ``$LDM_DINOV2_WEIGHTS``, and the
Hugging Face cache's snapshot of ``facebook/dinov2-large`` (ViT-L/14, Stein et al.'s choice).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm import tqdm

#: Stein et al.'s DINOv2 (ViT-L/14, 1024-dimensional features) on the Hugging Face hub.
DINOV2_DEFAULT = "facebook/dinov2-large"
#: Environment variable naming the weights folder.
DINOV2_ENV = "LDM_DINOV2_WEIGHTS"
#: Files that make a complete model folder, any one group.
DINOV2_FILES = (("config.json", "model.safetensors"), ("config.json", "pytorch_model.bin"))
#: The feature torch-fidelity's DINOv2 extractor provides.
DINOV2_FEATURES = "dinov2"


def download_hint(name: str = DINOV2_DEFAULT) -> str:
    folder = name.rsplit("/", 1)[-1]
    return (f"python -c \"from transformers import Dinov2Model; Dinov2Model.from_pretrained('{name}')"
            f".save_pretrained('{folder}')\" on a machine with network access, then pass --dinov2_weights {folder} "
            f"(or set ${DINOV2_ENV})")


def find_dinov2_weights(path: str | os.PathLike | None = None) -> Path:
    """The DINOv2 weights folder: ``path``, else ``$LDM_DINOV2_WEIGHTS``, else the Hugging Face cache.

    FileNotFoundError names the files, every place looked in, and how to get them.
    """
    from ldm.checkpoint.pretrained import describe_files, find_local_files, hf_cache_dir

    files = describe_files(DINOV2_FILES)
    for given, what in ((path, "--dinov2_weights"), (os.environ.get(DINOV2_ENV) or None, f"${DINOV2_ENV}")):
        if given is None:
            continue
        folder = find_local_files(str(given), DINOV2_FILES) if Path(given).is_dir() else None
        if folder is None:
            raise FileNotFoundError(f"DINOv2 weights ({what}) not found: {given} is not a folder holding {files}. "
                                    f"Get them with: {download_hint()}")
        return Path(folder)
    folder = find_local_files(DINOV2_DEFAULT, DINOV2_FILES)
    if folder is None:
        raise FileNotFoundError(f"DINOv2 weights ({files} of {DINOV2_DEFAULT}) not found: looked at --dinov2_weights "
                                f"(not given), ${DINOV2_ENV} (not set) and the Hugging Face cache {hf_cache_dir()}. "
                                f"Nothing is downloaded at run time; get them with: {download_hint()}")
    return Path(folder)


def folder_sha256(folder: Path, groups=DINOV2_FILES) -> str:
    """Hex SHA-256 of the first complete group of model files in ``folder`` (names and contents)."""
    names = next(g for g in groups if all((folder / f).is_file() for f in g))
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0")
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class _ClsToken(torch.nn.Module):
    """A transformers ``Dinov2Model`` returning what the torch.hub DINOv2 returns: the normed CLS token."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).pooler_output  # layernorm(last hidden state)[:, 0]


def local_extractor(folder: Path) -> torch.nn.Module:
    """torch-fidelity's DINOv2 extractor around the model in ``folder`` (loaded with local files only)."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2
    from transformers import Dinov2Model

    class LocalDinoV2(FeatureExtractorDinoV2):
        # FeatureExtractorDinoV2.__init__ would call torch.hub.load; everything else (forward) is its own.
        def __init__(self, model: torch.nn.Module):
            FeatureExtractorBase.__init__(self, "dinov2-local", [DINOV2_FEATURES])
            self.feature_extractor_internal_dtype = torch.float32
            self.model = _ClsToken(model)
            self.requires_grad_(False)
            self.eval()

    from ldm.checkpoint.pretrained import load_pretrained

    return LocalDinoV2(load_pretrained(Dinov2Model, str(folder), "DINOv2", DINOV2_FILES, download_hint()))


class DinoV2Features:
    """DINOv2 CLS features of uint8 image batches; the interface of ``InceptionFeatures`` (``key``, ``layers``)."""

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        self.weights = find_dinov2_weights(weights)
        self.device = torch.device(device)
        self.layers = (DINOV2_FEATURES,)
        self.key = f"dinov2-{folder_sha256(self.weights)[:16]}"
        self._model: torch.nn.Module | None = None

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._model = local_extractor(self.weights).to(self.device)
        return self._model

    @property
    def dim(self) -> int:
        """Feature dimension (the model's hidden size), read from its config without loading the weights."""
        return int(json.loads((self.weights / "config.json").read_text(encoding="utf-8"))["hidden_size"])

    @torch.no_grad()
    def __call__(self, batches: Iterable[torch.Tensor], total: int, desc: str = "DINOv2 features",
                 progress: bool = True) -> dict[str, torch.Tensor]:
        """``{"dinov2": (N, D) float32}`` of uint8 ``(B, 3, H, W)`` batches (``total`` images)."""
        values = []
        with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for batch in batches:
                (features,) = self.model(batch.to(self.device))
                values.append(features.float().cpu())
                bar.update(batch.shape[0])
        return {DINOV2_FEATURES: torch.cat(values)}
