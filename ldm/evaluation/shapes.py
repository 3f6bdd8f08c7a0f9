"""Metrics for the embedded default, with no download: a small classifier of the generated shapes
(``ldm/data/synthetic.py``) stands in for Inception.

The classifier is trained on every colour x shape combination (36 of them, not only the six demo
classes), with one head for the colour and one for the shape, so that it has to look at both: a
sample of "green triangle" counts as showing its class only when it is green *and* a triangle. Its
penultimate activations are the features of a Frechet distance (as FID, Heusel et al. 2017, but on
these features) between samples and real images of the same classes.

Training takes well under a minute on a CPU; the weights are cached under a key of the training
settings, so later evaluations load them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ldm.data.synthetic import CLASSES, COLOURS, SHAPES, SyntheticShapesBase
from ldm.checkpoint import load_checkpoint, save_checkpoint_atomic

logger = logging.getLogger(__name__)

#: Every colour x shape name; the classifier learns all of them.
ALL_CLASSES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
COLOUR_NAMES = tuple(COLOURS)
#: Training settings; they name the cached weights, so changing one retrains.
TRAIN_SETTINGS = {"size": 16, "num_samples": 7200, "epochs": 10, "batch_size": 64, "lr": 3e-3, "seed": 0,
                  "width": 32, "version": 1}
#: Validation accuracy (colour and shape both right) below which the classifier is not trusted.
MIN_VALIDATION_ACCURACY = 0.98


class ShapesClassifier(nn.Module):
    """Three conv blocks, global average pooling to ``4 * width`` features, a colour head and a shape head."""

    def __init__(self, width: int = 32,  # channels of the first block (then 2x, 4x)
                 ):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, stride=2), nn.GroupNorm(8, 4 * width), nn.SiLU(),
        )
        self.colour_head = nn.Linear(4 * width, len(COLOUR_NAMES))
        self.shape_head = nn.Linear(4 * width, len(SHAPES))

    @property
    def feature_dim(self) -> int:
        return self.colour_head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, 4 * width) pooled features."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, colour logits (N, 6), shape logits (N, 6))."""
        f = self.features(x)
        return f, self.colour_head(f), self.shape_head(f)


def class_parts(names: tuple[str, ...] | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour and shape indices of class names such as "red circle"."""
    colours, shapes = zip(*(n.split(" ") for n in names))
    return (torch.tensor([COLOUR_NAMES.index(c) for c in colours]), torch.tensor([SHAPES.index(s) for s in shapes]))


def real_images(num: int, split: str, size: int = 16, seed: int = 0,
                classes: tuple[str, ...] = CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` real images (N, 3, size, size) in [-1, 1] of ``classes`` (cycling) and their class indices."""
    ds = SyntheticShapesBase(size=size, num_samples=num, split=split, seed=seed, classes=classes)
    images = np.stack([ds[i]["image"] for i in range(num)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.arange(num) % len(classes)


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def train_classifier(settings: dict = TRAIN_SETTINGS, progress: bool = True) -> tuple[ShapesClassifier, float]:
    """Train on the train split of all 36 classes; returns the model and its validation accuracy."""
    torch.manual_seed(settings["seed"])
    x, y = real_images(settings["num_samples"], "train", settings["size"], settings["seed"], ALL_CLASSES)
    colour, shape = class_parts([ALL_CLASSES[i] for i in y])
    model = ShapesClassifier(settings["width"])
    opt = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    steps_per_epoch = len(x) // settings["batch_size"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings["lr"], total_steps=settings["epochs"] * steps_per_epoch)
    gen = torch.Generator().manual_seed(settings["seed"])
    model.train()
    with tqdm(total=settings["epochs"] * steps_per_epoch, desc="training the shapes classifier", disable=not progress,
              leave=False) as bar:
        for _ in range(settings["epochs"]):
            order = torch.randperm(len(x), generator=gen)
            for i in range(steps_per_epoch):
                idx = order[i * settings["batch_size"]:(i + 1) * settings["batch_size"]]
                batch = x[idx]
                if torch.rand((), generator=gen) < 0.5:  # shapes are mirror-symmetric up to rotation jitter
                    batch = batch.flip(3)
                _, lc, ls = model(batch)
                loss = F.cross_entropy(lc, colour[idx]) + F.cross_entropy(ls, shape[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
    model.eval()
    vx, vy = real_images(720, "validation", settings["size"], settings["seed"], ALL_CLASSES)
    accuracy = float(predict(model, vx).eq(vy).float().mean())
    return model, accuracy


@torch.no_grad()
def predict(model: ShapesClassifier, x: torch.Tensor, classes: tuple[str, ...] = ALL_CLASSES,
            batch_size: int = 256) -> torch.Tensor:
    """Index into ``classes`` of each image's predicted colour and shape; -1 when that pair is not in ``classes``."""
    feats = run(model, x, batch_size)
    colour, shape = model.colour_head(feats).argmax(1), model.shape_head(feats).argmax(1)
    lookup = {pair: i for i, pair in enumerate(zip(*[t.tolist() for t in class_parts(classes)]))}
    return torch.tensor([lookup.get((c, s), -1) for c, s in zip(colour.tolist(), shape.tolist())])


@torch.no_grad()
def classify(model: ShapesClassifier, x: torch.Tensor, classes: tuple[str, ...],
             batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Predictions for images in [-1, 1]: ``label``, the most probable of ``classes`` (joint log-probability
    of its colour and shape); ``colour`` and ``shape``, the argmax of each head."""
    feats = run(model, x, batch_size)
    log_c, log_s = model.colour_head(feats).log_softmax(1), model.shape_head(feats).log_softmax(1)
    colour_idx, shape_idx = class_parts(classes)
    joint = log_c[:, colour_idx] + log_s[:, shape_idx]  # (N, len(classes))
    return {"label": joint.argmax(1), "colour": log_c.argmax(1), "shape": log_s.argmax(1)}


@torch.no_grad()
def run(model: ShapesClassifier, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Pooled features (N, D) of images in [-1, 1], in batches."""
    return torch.cat([model.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def load_or_train(cache_dir: str | os.PathLike, settings: dict = TRAIN_SETTINGS,
                  progress: bool = True) -> tuple[ShapesClassifier, float]:
    """The classifier for ``settings`` from ``cache_dir``, trained and saved there when absent."""
    path = Path(cache_dir) / f"shapes-classifier-{settings_key(settings)}.pt"
    if path.is_file():
        blob = load_checkpoint(path)
        model = ShapesClassifier(settings["width"])
        model.load_state_dict(blob["state_dict"])
        logger.info("shapes classifier from %s (validation accuracy %.4f)", path, blob["accuracy"])
        return model.eval(), float(blob["accuracy"])
    model, accuracy = train_classifier(settings, progress)
    if accuracy < MIN_VALIDATION_ACCURACY:
        raise RuntimeError(f"the shapes classifier reached only {accuracy:.3f} validation accuracy "
                           f"(needs {MIN_VALIDATION_ACCURACY}); its figures would not be trustworthy")
    save_checkpoint_atomic({"state_dict": model.state_dict(), "accuracy": accuracy, "settings": settings}, path)
    return model, accuracy
