"""Samples against a reference: FID, Inception Score, KID and precision/recall on Inception features.

Every setting that changes a figure is torch-fidelity's default unless given: 10 IS splits, KID
with 100 subsets of 1000 (fewer when a set is smaller), precision/recall with k = 3 (on the Inception
pool features, as ADM's evaluator computes them), random seed 2020. The reference's features are
cached under its content hash, so evaluating again against the same reference skips them. Problems
that make a figure undefined or a run pointless are reported before any image is read.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm.evaluation import metrics as M
from ldm.evaluation.inception import LOGIT_FEATURES, POOL_FEATURES, InceptionFeatures
from ldm.evaluation.inputs import ImageSet
from ldm.evaluation.settings import default_cache_dir, parse_metrics  # noqa: F401 (re-exported)
from ldm.util import atomic_path

logger = logging.getLogger(__name__)

#: Metric names accepted by --metrics, and the JSON keys each one fills.
METRICS = {
    "fid": ("fid",),
    "isc": ("isc_mean", "isc_std"),
    "kid": ("kid_mean", "kid_std"),
    "prc": ("precision", "recall"),
}
#: Feature dimension of the Inception pool layer.
POOL_DIM = 2048


@dataclass
class Settings:
    """What changes the figures (torch-fidelity's defaults)."""

    metrics: tuple[str, ...] = tuple(METRICS)
    isc_splits: int = M.ISC_SPLITS
    kid_subsets: int = M.KID_SUBSETS
    kid_subset_size: int = M.KID_SUBSET_SIZE
    prc_neighborhood: int = M.PRC_NEIGHBORHOOD
    seed: int = M.RNG_SEED
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        logger.warning(message)
        self.warnings.append(message)


def plan(settings: Settings, num_samples: int, num_reference: int | None, reference_has_images: bool = True) -> Settings:
    """Check that each requested metric can be computed on sets of these sizes, before any work.

    ValueError when one cannot (no reference for a two-set metric, fewer samples than IS splits or than
    k + 1); warnings when a figure is not comparable (FID with N <= 2048); the KID subset size is
    lowered to the smaller set when needed.
    """
    two_set = [m for m in settings.metrics if m in ("fid", "kid", "prc")]
    if two_set and num_reference is None:
        raise ValueError(f"--metrics {','.join(two_set)} compare two sets: give --reference")
    if "isc" in settings.metrics and num_samples < settings.isc_splits:
        raise ValueError(f"the Inception Score uses {settings.isc_splits} splits (--isc_splits) but there are only "
                         f"{num_samples} samples")
    if "fid" in settings.metrics:
        for name, n in (("samples", num_samples), ("reference", num_reference)):
            reason = M.fid_undefined_reason(n, POOL_DIM) if n is not None else None
            if reason and not (name == "reference" and not reference_has_images):
                settings.warn(f"{name}: {reason}; the figure below is computed but is not a valid FID")
    if ("kid" in settings.metrics or "prc" in settings.metrics) and not reference_has_images:
        raise ValueError("the reference holds only statistics (mu, sigma), no images: KID and precision/recall "
                         "need its images")
    if "kid" in settings.metrics:
        smallest = min(num_samples, num_reference)
        if smallest < 2:
            raise ValueError(f"KID needs at least 2 images in each set; got {num_samples} and {num_reference}")
        if settings.kid_subset_size > smallest:
            settings.warn(f"KID subset size lowered from {settings.kid_subset_size} to {smallest}, the size of the "
                          f"smaller set")
            settings.kid_subset_size = smallest
    if "prc" in settings.metrics and min(num_samples, num_reference) <= settings.prc_neighborhood:
        raise ValueError(f"precision/recall with k={settings.prc_neighborhood} needs more than "
                         f"{settings.prc_neighborhood} images in each set; got {num_samples} and {num_reference}")
    return settings


def cached_features(extractor: InceptionFeatures, images: ImageSet, cache_dir: Path | None, batch_size: int,
                    progress: bool = True) -> dict[str, torch.Tensor]:
    """Features of ``images``, read from ``cache_dir`` when this content was seen with this extractor."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{extractor.key}-{images.content_hash()[:32]}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                if all(layer in data.files for layer in extractor.layers):
                    logger.info("reference features from the cache: %s", path)
                    return {layer: torch.from_numpy(data[layer]) for layer in extractor.layers}
    features = extractor(images.batches(batch_size), total=len(images), desc=f"features {images.what}",
                         progress=progress)
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{layer: value.numpy() for layer, value in features.items()})
    return features


def metrics_from_features(settings: Settings, samples: dict[str, torch.Tensor],
                          reference: dict[str, torch.Tensor] | None,
                          reference_stats: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The requested metrics from Inception features (``{layer: (N, D)}``) of samples and reference."""
    out: dict[str, Any] = {key: None for keys in METRICS.values() for key in keys}
    if "fid" in settings.metrics:
        ref_stats = reference_stats if reference_stats is not None else M.feature_statistics(reference[POOL_FEATURES])
        out["fid"] = M.frechet_distance(M.feature_statistics(samples[POOL_FEATURES]), ref_stats)
    if "isc" in settings.metrics:
        out["isc_mean"], out["isc_std"] = M.inception_score(samples[LOGIT_FEATURES], settings.isc_splits,
                                                            seed=settings.seed)
    if "kid" in settings.metrics:
        out["kid_mean"], out["kid_std"] = M.kernel_distance(samples[POOL_FEATURES], reference[POOL_FEATURES],
                                                            settings.kid_subsets, settings.kid_subset_size,
                                                            settings.seed)
    if "prc" in settings.metrics:
        out["precision"], out["recall"] = M.precision_recall(samples[POOL_FEATURES], reference[POOL_FEATURES],
                                                             settings.prc_neighborhood)
    return out


def evaluate(samples: ImageSet, reference: ImageSet | None, extractor: InceptionFeatures, settings: Settings,
             cache_dir: Path | None = None, batch_size: int = 64, progress: bool = True,
             sample_features: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Evaluate ``samples`` against ``reference``; the result holds the figures, sizes, settings and warnings.

    FID uses the reference's precomputed ``mu``/``sigma`` when it has them (ADM's reference batches).
    """
    use_stats = reference is not None and reference.stats is not None and "fid" in settings.metrics
    ref_needs_images = reference is not None and (not use_stats or any(m in settings.metrics for m in ("kid", "prc")))
    plan(settings, len(samples), len(reference) if reference is not None else None,
         reference_has_images=reference is None or reference.array is not None or reference.files is not None)
    if use_stats:
        logger.info("FID against the precomputed mu/sigma of %s", reference.path)
    ref_features = (cached_features(extractor, reference, cache_dir, batch_size, progress)
                    if ref_needs_images else None)
    if sample_features is None:
        sample_features = extractor(samples.batches(batch_size), total=len(samples), desc=f"features {samples.what}",
                                    progress=progress)
    result = metrics_from_features(settings, sample_features, ref_features, reference.stats if use_stats else None)
    result.update({
        "num_samples": len(samples),
        "num_reference": len(reference) if reference is not None else None,
        "samples": str(samples.path),
        "reference": str(reference.path) if reference is not None else None,
        "feature_extractor": extractor.key,
        "inception_weights": str(extractor.weights),
        "settings": {"metrics": list(settings.metrics), "isc_splits": settings.isc_splits,
                     "kid_subsets": settings.kid_subsets, "kid_subset_size": settings.kid_subset_size,
                     "prc_neighborhood": settings.prc_neighborhood, "seed": settings.seed,
                     "reference_statistics": "precomputed mu/sigma" if use_stats else "from images"},
        "warnings": list(settings.warnings),
    })
    return result


#: Rows of the printed table: (label, key, key of its spread or None).
TABLE_ROWS = (("FID", "fid", None), ("Inception Score", "isc_mean", "isc_std"), ("KID", "kid_mean", "kid_std"),
              ("Precision", "precision", None), ("Recall", "recall", None))


def format_table(result: dict[str, Any], published: dict[str, Any] | None = None) -> str:
    """The figures as a text table; with ``published``, a column of published figures beside them."""
    head = f"{'metric':<16} {'measured':>20}" + (f" {'published':>12}" if published is not None else "")
    lines = [head, "-" * len(head)]
    for label, key, spread in TABLE_ROWS:
        value = result.get(key)
        if value is None and (published is None or published.get(key) is None):
            continue
        text = "-" if value is None else (f"{value:.4f}" + (f" +- {result[spread]:.4f}" if spread else ""))
        line = f"{label:<16} {text:>20}"
        if published is not None:
            ref = published.get(key)
            line += f" {('-' if ref is None else ref):>12}"
        lines.append(line)
    lines.append(f"{'samples':<16} {result.get('num_samples')!s:>20}")
    if result.get("num_reference") is not None:
        lines.append(f"{'reference':<16} {result.get('num_reference')!s:>20}")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``result`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8")
    return Path(path)
