"""Samples against a reference: FID, Inception Score, KID and precision/recall on Inception features;
beyond them sFID (Nash et al. 2021) on Inception's spatial features, the Frechet distance of DINOv2
features (Stein et al. 2023) and the CLIP score of text-conditional samples (Hessel et al. 2021).

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
from ldm.evaluation.inception import LOGIT_FEATURES, POOL_FEATURES, SPATIAL_DIM, SPATIAL_FEATURES, InceptionFeatures
from ldm.evaluation.image_sets import ImageSet
from ldm.evaluation.settings import default_cache_dir, parse_metrics  # noqa: F401 (re-exported)
from ldm.checkpoint import atomic_path

logger = logging.getLogger(__name__)

#: Metric names accepted by --metrics, and the JSON keys each one fills.
METRICS = {
    "fid": ("fid",),
    "isc": ("isc_mean", "isc_std"),
    "kid": ("kid_mean", "kid_std"),
    "prc": ("precision", "recall"),
    "sfid": ("sfid",),
    "fd_dinov2": ("fd_dinov2",),
    "clip_score": ("clip_score",),
}
#: Metrics computed on Inception features, and those that compare the samples with a reference.
INCEPTION_METRICS = ("fid", "isc", "kid", "prc", "sfid")
TWO_SET_METRICS = ("fid", "kid", "prc", "sfid", "fd_dinov2")
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
    dinov2_dim: int | None = None        # feature dimension of the DINOv2 model, for fd_dinov2's check
    captions: list[str] | None = None    # one per sample, for clip_score
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        logger.warning(message)
        self.warnings.append(message)


def inception_layers(metrics: tuple[str, ...]) -> tuple[str, ...]:
    """The Inception layers the metrics need (none when no Inception metric is asked for)."""
    if not any(m in INCEPTION_METRICS for m in metrics):
        return ()
    return (POOL_FEATURES, LOGIT_FEATURES) + ((SPATIAL_FEATURES,) if "sfid" in metrics else ())


def plan(settings: Settings, num_samples: int, num_reference: int | None, reference_has_images: bool = True,
         reference: ImageSet | None = None) -> Settings:
    """Check that each requested metric can be computed on sets of these sizes, before any work.

    ValueError when one cannot (no reference for a two-set metric, fewer samples than IS splits or than
    k + 1, no caption per sample for the CLIP score); warnings when a figure is not comparable (a Frechet
    distance with no more samples than feature dimensions: FID's 2048, sFID's 2023, DINOv2's); the KID
    subset size is lowered to the smaller set when needed. ``reference`` tells which precomputed
    statistics the reference carries.
    """
    two_set = [m for m in settings.metrics if m in TWO_SET_METRICS]
    if two_set and num_reference is None:
        raise ValueError(f"--metrics {','.join(two_set)} compare two sets: give --reference")
    if "isc" in settings.metrics and num_samples < settings.isc_splits:
        raise ValueError(f"the Inception Score uses {settings.isc_splits} splits (--isc_splits) but there are only "
                         f"{num_samples} samples")
    has_stats = {"fid": reference is not None and reference.stats is not None,
                 "sfid": reference is not None and reference.spatial_stats is not None, "fd_dinov2": False}
    dims = {"fid": POOL_DIM, "sfid": SPATIAL_DIM, "fd_dinov2": settings.dinov2_dim}
    for metric in ("fid", "sfid", "fd_dinov2"):
        if metric not in settings.metrics:
            continue
        if not reference_has_images and not has_stats[metric]:
            raise ValueError(f"the reference holds only statistics (mu, sigma), no images, and none for {metric}: "
                             f"{metric} needs its images" + (" or its mu_s/sigma_s" if metric == "sfid" else ""))
        for name, n in (("samples", num_samples), ("reference", num_reference)):
            reason = M.fid_undefined_reason(n, dims[metric]) if n is not None and dims[metric] else None
            if reason and not (name == "reference" and has_stats[metric]):
                label = {"fid": "FID", "sfid": "sFID", "fd_dinov2": "FD_DINOv2"}[metric]
                settings.warn(f"{name}: {reason.replace('FID', label, 1)}; the figure below is computed but is not "
                              f"a valid {label}")
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
    if "clip_score" in settings.metrics:
        if settings.captions is None:
            raise ValueError("--metrics clip_score scores samples against their captions: give --prompts FILE "
                             "(one caption per sample)")
        if len(settings.captions) != num_samples:
            raise ValueError(f"{len(settings.captions)} captions for {num_samples} samples; the CLIP score needs "
                             f"one caption per sample")
    return settings


def cached_features(extractor: Any, images: ImageSet, cache_dir: Path | None, batch_size: int,
                    progress: bool = True) -> dict[str, torch.Tensor]:
    """Features of ``images``, read from ``cache_dir`` when this content was seen with this extractor
    (``InceptionFeatures`` or ``DinoV2Features``: ``key``, ``layers`` and a call on batches)."""
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
                          reference_stats: dict[str, np.ndarray] | None = None,
                          reference_spatial_stats: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The requested Inception metrics from features (``{layer: (N, D)}``) of samples and reference."""
    out: dict[str, Any] = {key: None for keys in METRICS.values() for key in keys}
    if "fid" in settings.metrics:
        ref_stats = reference_stats if reference_stats is not None else M.feature_statistics(reference[POOL_FEATURES])
        out["fid"] = M.frechet_distance(M.feature_statistics(samples[POOL_FEATURES]), ref_stats)
    if "sfid" in settings.metrics:
        ref_stats = (reference_spatial_stats if reference_spatial_stats is not None
                     else M.feature_statistics(reference[SPATIAL_FEATURES]))
        out["sfid"] = M.frechet_distance(M.feature_statistics(samples[SPATIAL_FEATURES]), ref_stats)
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


def evaluate(samples: ImageSet, reference: ImageSet | None, extractor: InceptionFeatures | None, settings: Settings,
             cache_dir: Path | None = None, batch_size: int = 64, progress: bool = True,
             sample_features: dict[str, torch.Tensor] | None = None, dinov2: Any = None,
             clip: Any = None) -> dict[str, Any]:
    """Evaluate ``samples`` against ``reference``; the result holds the figures, sizes, settings and warnings.

    ``extractor`` (Inception) serves fid, isc, kid, prc and sfid, ``dinov2`` (``DinoV2Features``) fd_dinov2,
    ``clip`` (``ClipScorer``) clip_score with ``settings.captions``. FID and sFID use the reference's
    precomputed ``mu``/``sigma`` and ``mu_s``/``sigma_s`` when it has them (ADM's reference batches).
    """
    metrics = settings.metrics
    for needed, given, what in ((INCEPTION_METRICS, extractor, "an Inception extractor"),
                                (("fd_dinov2",), dinov2, "DINOv2 features"), (("clip_score",), clip, "a CLIP")):
        asked = [m for m in metrics if m in needed]
        if asked and given is None:
            raise ValueError(f"--metrics {','.join(asked)} need {what}")
    fid_stats = reference.stats if reference is not None and "fid" in metrics else None
    sfid_stats = reference.spatial_stats if reference is not None and "sfid" in metrics else None
    ref_needs_inception = reference is not None and (
        ("fid" in metrics and fid_stats is None) or ("sfid" in metrics and sfid_stats is None)
        or any(m in metrics for m in ("kid", "prc")))
    plan(settings, len(samples), len(reference) if reference is not None else None,
         reference_has_images=reference is None or reference.array is not None or reference.files is not None,
         reference=reference)
    if fid_stats is not None:
        logger.info("FID against the precomputed mu/sigma of %s", reference.path)
    if sfid_stats is not None:
        logger.info("sFID against the precomputed mu_s/sigma_s of %s", reference.path)
    result: dict[str, Any] = {key: None for keys in METRICS.values() for key in keys}
    if any(m in metrics for m in INCEPTION_METRICS):
        ref_features = (cached_features(extractor, reference, cache_dir, batch_size, progress)
                        if ref_needs_inception else None)
        if sample_features is None:
            sample_features = extractor(samples.batches(batch_size), total=len(samples),
                                        desc=f"features {samples.what}", progress=progress)
        result.update(metrics_from_features(settings, sample_features, ref_features, fid_stats, sfid_stats))
    if "fd_dinov2" in metrics:
        ref = cached_features(dinov2, reference, cache_dir, batch_size, progress)[dinov2.layers[0]]
        own = dinov2(samples.batches(batch_size), total=len(samples), desc=f"DINOv2 features {samples.what}",
                     progress=progress)[dinov2.layers[0]]
        result["fd_dinov2"] = M.frechet_distance(M.feature_statistics(own), M.feature_statistics(ref))
    if "clip_score" in metrics:
        result["clip_score"] = clip(samples, settings.captions, batch_size, progress)
    result.update({
        "num_samples": len(samples),
        "num_reference": len(reference) if reference is not None else None,
        "samples": str(samples.path),
        "reference": str(reference.path) if reference is not None else None,
        "feature_extractor": extractor.key if extractor is not None else None,
        "inception_weights": str(extractor.weights) if extractor is not None else None,
        "dinov2_weights": str(dinov2.weights) if dinov2 is not None else None,
        "clip_model": clip.name if clip is not None else None,
        "settings": {"metrics": list(settings.metrics), "isc_splits": settings.isc_splits,
                     "kid_subsets": settings.kid_subsets, "kid_subset_size": settings.kid_subset_size,
                     "prc_neighborhood": settings.prc_neighborhood, "seed": settings.seed,
                     "reference_statistics": "precomputed mu/sigma" if fid_stats is not None else "from images",
                     "sfid_reference_statistics": ("precomputed mu_s/sigma_s" if sfid_stats is not None
                                                   else "from images")},
        "warnings": list(settings.warnings),
    })
    return result


#: Rows of the printed table: (label, key, key of its spread or None).
TABLE_ROWS = (("FID", "fid", None), ("Inception Score", "isc_mean", "isc_std"), ("KID", "kid_mean", "kid_std"),
              ("Precision", "precision", None), ("Recall", "recall", None), ("sFID", "sfid", None),
              ("FD DINOv2", "fd_dinov2", None), ("CLIP score", "clip_score", None))


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


def report(result: dict[str, Any], out: str | os.PathLike | None) -> None:
    """Print the result's warnings as ``note:`` lines and, when ``out`` is given, write it there as JSON."""
    for warning in result["warnings"]:
        print(f"note: {warning}")
    if out:
        print(f"wrote {write_json(result, out)}")
