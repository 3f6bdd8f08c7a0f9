"""The embedded default, evaluated: class-conditional samples of the demo LDM (``scripts/demo.py``) scored
by the shapes classifier of :mod:`ldm.evaluation.shapes`.

Two figures: the *class accuracy* (the fraction of samples whose colour and shape, as the classifier
sees them, are those of the class they were drawn for) and the *Frechet distance* between the
classifier features of the samples and of as many real images of the same classes (lower is better;
the distance between two real sets of that size is reported beside it as the floor).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import OmegaConf

from ldm.data.synthetic import CLASSES
from ldm.evaluation import metrics as M
from ldm.evaluation import shapes
from ldm.evaluation.settings import DEMO_GUIDANCE, DEMO_OUTDIR
from ldm.pixels import to_uint8_hwc
from ldm.sampler_registry import check_run_options, resolve_sampler_name, run_steps
from ldm.scripting.generate import Batch, generate, plan_batches
from ldm.scripting.loading import load_model
from ldm.scripting.outputs import save_npz
from ldm.util import REPO_ROOT

logger = logging.getLogger(__name__)

DEMO_CONFIG = REPO_ROOT / "configs" / "demo" / "ldm_shapes_cond.yaml"


def find_demo_checkpoint(outdir: str | os.PathLike = DEMO_OUTDIR) -> Path:
    """``last.ckpt`` of the newest demo LDM run under ``<outdir>/logs``; FileNotFoundError saying how to make one."""
    runs = sorted(Path(outdir).glob("logs/*_demo_ldm/checkpoints/last.ckpt"))
    if not runs:
        raise FileNotFoundError(f"no demo LDM checkpoint under {Path(outdir) / 'logs'}/*_demo_ldm/checkpoints/"
                                f"last.ckpt: run `make demo` (python scripts/demo.py) first, or pass --ckpt")
    return runs[-1]


def load_demo_model(ckpt: str | os.PathLike, config: str | os.PathLike = DEMO_CONFIG,
                    device: torch.device = torch.device("cpu")) -> tuple[torch.nn.Module, int]:
    """The demo LDM from its checkpoint (which holds the autoencoder too) and its null class label."""
    cfg = OmegaConf.load(config)
    model, _ = load_model(cfg, ckpt, device)
    null_class = cfg.model.params.get("ucg_class")
    if null_class is None:
        raise ValueError(f"{config}: the demo evaluation needs a class-conditional model with ucg_class "
                         f"(the label trained as 'no class')")
    return model, int(null_class)


@torch.no_grad()
def decoded_size(model: torch.nn.Module) -> int:
    """Side length of the images the model's first stage decodes its latents to."""
    device = next(model.parameters()).device
    z = torch.zeros(1, model.channels, model.image_size, model.image_size, device=device)
    return int(model.decode_first_stage(z).shape[-1])


@contextlib.contextmanager
def count_model_calls(model: torch.nn.Module) -> Iterator[list[int]]:
    """Count calls of ``model.apply_model`` inside the block (a guided step batches both branches in one call)."""
    calls = [0]
    original = model.apply_model

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    model.apply_model = counted
    try:
        yield calls
    finally:
        del model.apply_model  # the instance attribute; the class method shows through again


@torch.no_grad()
def sample_classes(model: torch.nn.Module, null_class: int, sampler: str = "ddim", steps: int | None = 50,
                   n_per_class: int = 64, scale: float = DEMO_GUIDANCE, eta: float = 0.0, seed: int = 0,
                   batch_size: int = 192, num_classes: int = len(CLASSES),
                   progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Samples (N, 3, H, W) in [-1, 1], their labels (class of sample i: i mod num_classes) and the model
    evaluations per sample. Batch b is drawn with seed ``seed + b``."""
    name = check_run_options(sampler, eta)
    total = n_per_class * num_classes
    labels = torch.arange(total) % num_classes
    device = next(model.parameters()).device

    def conditioning(batch: Batch) -> tuple[Any, Any]:
        classes = labels[batch.start:batch.start + batch.size].to(device)
        return (model.get_learned_conditioning({"class_label": classes}),
                model.get_learned_conditioning({"class_label": torch.full_like(classes, null_class)}))

    batches = plan_batches(total, batch_size)
    with model.ema_scope("evaluation sampling"), count_model_calls(model) as calls:
        images = [out.images.clamp(-1, 1).cpu()
                  for out in generate(model, name, steps, batches, eta=eta, seed=seed, conditioning=conditioning,
                                      scale=scale, progress=progress,
                                      desc=f"sampling {name} {run_steps(name, steps, model.num_timesteps)}")]
    return torch.cat(images), labels, calls[0] // len(batches)


def score_samples(classifier: shapes.ShapesClassifier, images: torch.Tensor, labels: torch.Tensor,
                  reference: torch.Tensor, classes: tuple[str, ...] = CLASSES) -> dict[str, Any]:
    """Accuracies and the Frechet distance of classifier features to ``reference``.

    ``accuracy``: the fraction of samples for which, of the ``classes``, the classifier finds the one they
    were drawn for the most probable (overall and per class). Stricter: ``colour_accuracy`` and
    ``shape_accuracy`` (each head's argmax over all 6 colours or shapes is right) and ``exact_accuracy`` (both).
    """
    pred = shapes.classify(classifier, images, classes)
    correct = pred["label"].eq(labels)
    colour_idx, shape_idx = shapes.class_parts(classes)
    colour_ok, shape_ok = pred["colour"].eq(colour_idx[labels]), pred["shape"].eq(shape_idx[labels])
    reason = M.fid_undefined_reason(len(images), classifier.feature_dim)
    if reason:
        raise ValueError(reason.replace("FID", "The Frechet distance") + "; draw more samples (--n_per_class)")
    fd = M.frechet_distance(M.feature_statistics(shapes.run(classifier, images)),
                            M.feature_statistics(shapes.run(classifier, reference)))
    return {
        "accuracy": float(correct.float().mean()),
        "per_class_accuracy": {name: float(correct[labels == i].float().mean()) for i, name in enumerate(classes)},
        "colour_accuracy": float(colour_ok.float().mean()),
        "shape_accuracy": float(shape_ok.float().mean()),
        "exact_accuracy": float((colour_ok & shape_ok).float().mean()),
        "fd": fd,
        "num_samples": len(images),
    }


def reference_images(n_per_class: int, size: int, seed: int = 0) -> torch.Tensor:
    """Real validation images of the demo classes, as many per class as the samples."""
    return shapes.real_images(n_per_class * len(CLASSES), "validation", size, seed)[0]


def real_floor(classifier: shapes.ShapesClassifier, reference: torch.Tensor, n_per_class: int, size: int) -> float:
    """Frechet distance between ``reference`` and another real set of the same size (train split, other seed)."""
    other = shapes.real_images(n_per_class * len(CLASSES), "train", size, seed=1)[0]
    return M.frechet_distance(M.feature_statistics(shapes.run(classifier, other)),
                              M.feature_statistics(shapes.run(classifier, reference)))


def evaluate_demo(ckpt: str | os.PathLike, cache_dir: str | os.PathLike, sampler: str = "ddim", steps: int = 50,
                  n_per_class: int = 64, scale: float = DEMO_GUIDANCE, eta: float = 0.0, seed: int = 0,
                  device: torch.device = torch.device("cpu"), progress: bool = True,
                  samples_out: str | os.PathLike | None = None) -> dict[str, Any]:
    """The demo model's class accuracy and Frechet distance with one sampler setting (see the module docstring)."""
    started = time.time()
    if shapes.TRAIN_SETTINGS["width"] * 4 >= n_per_class * len(CLASSES):
        raise ValueError(f"--n_per_class {n_per_class}: the Frechet distance of {shapes.TRAIN_SETTINGS['width'] * 4}"
                         f"-dimensional features needs more than that many samples in all")
    classifier, val_accuracy = shapes.load_or_train(cache_dir, progress=progress)
    model, null_class = load_demo_model(ckpt, device=device)
    images, labels, nfe = sample_classes(model, null_class, sampler, steps, n_per_class, scale, eta, seed,
                                         progress=progress)
    size = images.shape[-1]
    if samples_out is not None:  # the samples as scripts/evaluate.py reads them, with their labels
        save_npz(samples_out, to_uint8_hwc(images), labels.numpy())
    reference = reference_images(n_per_class, size)
    result = score_samples(classifier, images, labels, reference)
    result.update({
        "fd_real_vs_real": real_floor(classifier, reference, n_per_class, size),
        "classifier_validation_accuracy": val_accuracy,
        "checkpoint": str(ckpt),
        "sampler": resolve_sampler_name(sampler),
        "steps": run_steps(sampler, steps, model.num_timesteps),
        "model_evaluations": nfe,
        "scale": scale,
        "eta": eta,
        "seed": seed,
        "seconds": round(time.time() - started, 1),
    })
    return result
