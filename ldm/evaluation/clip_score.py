"""CLIP score of text-conditional samples (Hessel et al. 2021; Radford et al. 2021's CLIP): the mean over
samples of 100 * cos(E_image, E_caption), floored at 0, as torchmetrics' ``CLIPScore`` computes it (the
figure diffusion papers report as "CLIP score"), with a CLIP model and processor from local files only.

torch-fidelity's CLIP extractor holds only the image tower, so the text side needs another implementation:
torchmetrics' metric is used, given the transformers ``CLIPModel`` and ``CLIPProcessor`` loaded here with
local files only (torchmetrics itself would call ``from_pretrained`` on a hub name, which may download).
The model is a folder saved with ``save_pretrained`` or a Hugging Face repository id found in the local
cache (default ``openai/clip-vit-large-patch14``, torchmetrics' default).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm import tqdm

from ldm.evaluation.image_sets import ImageSet

#: torchmetrics' default CLIP.
CLIP_DEFAULT = "openai/clip-vit-large-patch14"
#: Files of a complete processor (image preprocessing and tokenizer), any one group.
CLIP_PROCESSOR_FILES = (("preprocessor_config.json", "tokenizer.json"),
                        ("preprocessor_config.json", "vocab.json", "merges.txt"))


def read_captions(path: str | os.PathLike, num_samples: int) -> list[str]:
    """One caption per sample, a line each, in the samples' order; ValueError naming the counts otherwise."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--prompts {p}: not found (expected a text file with one caption per sample)")
    captions = p.read_text(encoding="utf-8").splitlines()
    if len(captions) != num_samples:
        raise ValueError(f"--prompts {p} holds {len(captions)} lines but there are {num_samples} samples; the CLIP "
                         f"score needs one caption per sample, line i for sample i in the samples' order")
    empty = [i + 1 for i, c in enumerate(captions) if not c.strip()]
    if empty:
        raise ValueError(f"--prompts {p}: line {empty[0]} is empty ({len(empty)} empty lines); every sample needs "
                         f"its caption")
    return captions


def download_hint(name: str) -> str:
    return (f"python -c \"from transformers import CLIPModel, CLIPProcessor; CLIPModel.from_pretrained('{name}'); "
            f"CLIPProcessor.from_pretrained('{name}')\" (fills the Hugging Face cache; or save_pretrained both into "
            f"a folder and pass --clip_model FOLDER)")


class _Projected(torch.nn.Module):
    """The embeddings torchmetrics' CLIPScore asks for with ``get_image_features`` / ``get_text_features``.

    transformers 5 returns model outputs from those two methods, where torchmetrics 1.x expects the
    projected embeddings; this gives it exactly those (tower pooler output, then the projection), whatever
    the transformers version.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.visual_projection(self.model.vision_model(pixel_values=pixel_values).pooler_output)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.model.text_projection(pooled)


class _Locate:
    """A loader for ``load_pretrained`` that only finds the folder: the files are checked before any work."""

    @staticmethod
    def from_pretrained(folder: str, **kwargs) -> str:
        return folder


class ClipScorer:
    """CLIP score of image sets against their captions with a local CLIP (model and processor).

    A missing model or processor file is reported (``MissingPretrainedFiles``: the files, where they were
    looked for, how to get them) when the scorer is made, before any image is read.
    """

    def __init__(self, model: str = CLIP_DEFAULT, device: str | torch.device = "cpu"):
        from ldm.checkpoint.pretrained import load_pretrained
        from ldm.modules.encoders.modules import CLIP_MODEL_FILES

        self.name = str(model)
        self.device = torch.device(device)
        for groups in (CLIP_MODEL_FILES, CLIP_PROCESSOR_FILES):
            load_pretrained(_Locate, self.name, "CLIP score", groups, download_hint(self.name))
        self._metric = None

    @property
    def metric(self):
        if self._metric is None:
            from torchmetrics.multimodal.clip_score import CLIPScore
            from transformers import CLIPModel, CLIPProcessor

            from ldm.checkpoint.pretrained import load_pretrained
            from ldm.modules.encoders.modules import CLIP_MODEL_FILES

            hint = download_hint(self.name)
            model = load_pretrained(CLIPModel, self.name, "CLIP score", CLIP_MODEL_FILES, hint).eval()
            processor = load_pretrained(CLIPProcessor, self.name, "CLIP score", CLIP_PROCESSOR_FILES, hint)
            self._metric = CLIPScore(model_name_or_path=lambda: (_Projected(model), processor)).to(self.device)
        return self._metric

    @torch.no_grad()
    def __call__(self, images: ImageSet, captions: list[str], batch_size: int = 64, progress: bool = True) -> float:
        if len(captions) != len(images):
            raise ValueError(f"{len(captions)} captions for {len(images)} samples; the CLIP score needs one per sample")
        metric = self.metric
        metric.reset()
        with tqdm(total=len(images), desc=f"CLIP score {images.what}", unit="img", disable=not progress,
                  leave=False) as bar:
            start = 0
            for batch in images.batches(batch_size):
                metric.update(list(batch.to(self.device)), captions[start:start + len(batch)])
                start += len(batch)
                bar.update(len(batch))
        return float(metric.compute())
