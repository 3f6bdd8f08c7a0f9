"""Sample-quality metrics on features, and reconstruction metrics on images.

The feature metrics are torch-fidelity's implementations (so that the figures are those of the
reference implementation), wrapped with checks that say when a figure is not defined:

- Frechet distance (FID: Heusel et al. 2017) between Gaussians fitted to two feature sets;
- Inception Score (Salimans et al. 2016) of class logits, over ``splits`` splits;
- Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel,
  averaged over random subsets;
- improved precision and recall (Kynkaenniemi et al. 2019): the fraction of samples inside the
  k-nearest-neighbour balls of the reference (precision) and vice versa (recall), k = 3.

PSNR, and SSIM (Wang et al. 2004, 11x11 Gaussian window with sigma 1.5, via kornia), compare
reconstructions with their inputs.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ldm.evaluation.settings import ISC_SPLITS, KID_SUBSET_SIZE, KID_SUBSETS, PRC_NEIGHBORHOOD, RNG_SEED

logger = logging.getLogger(__name__)


def _tensor(features) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    if t.dim() != 2:
        raise ValueError(f"features must be a 2-D (N, D) array; got shape {tuple(t.shape)}")
    return t.float()


def fid_undefined_reason(num_samples: int, dim: int) -> str | None:
    """Why the Frechet distance of ``num_samples`` features of dimension ``dim`` is not defined, or None.

    The covariance of N samples has rank at most N - 1; with N <= D it is singular, the fitted Gaussian
    is degenerate, and the figure is not a valid FID (it is biased and not comparable to published ones).
    """
    if num_samples <= dim:
        return (f"FID is not defined for {num_samples} samples of {dim}-dimensional features: the covariance needs "
                f"more samples than dimensions (N > {dim}; published figures use 10,000 to 50,000)")
    return None


def feature_statistics(features) -> dict[str, np.ndarray]:
    """Mean and covariance ``{"mu", "sigma"}`` of (N, D) features (torch-fidelity's estimate)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    t = _tensor(features)
    if len(t) < 2:
        raise ValueError(f"a covariance needs at least 2 samples; got {len(t)}")
    return fid_features_to_statistics(t)


def frechet_distance(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) (torch-fidelity's computation)."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    if stats_1["mu"].shape != stats_2["mu"].shape:
        raise ValueError(f"statistics of different feature dimensions: {stats_1['mu'].shape} vs {stats_2['mu'].shape}")
    s1 = {k: np.asarray(v, dtype=np.float64) for k, v in stats_1.items()}
    s2 = {k: np.asarray(v, dtype=np.float64) for k, v in stats_2.items()}
    return float(fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"])


def inception_score(logits, splits: int = ISC_SPLITS, shuffle: bool = True, seed: int = RNG_SEED) -> tuple[float, float]:
    """(mean, std) over ``splits`` of exp(E_x KL(p(y|x) || p(y))), from class logits (N, C)."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    t = _tensor(logits)
    if splits < 1 or len(t) < splits:
        raise ValueError(f"the Inception Score needs at least one sample per split: {len(t)} samples, {splits} splits")
    out = isc_features_to_metric(t, splits=splits, shuffle=shuffle, rng_seed=seed)
    return out["inception_score_mean"], out["inception_score_std"]


def kernel_distance(features_1, features_2, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
                    seed: int = RNG_SEED) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 with kernel (x.y / D + 1)^3 over ``subsets`` random subsets."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    f1, f2 = _tensor(features_1), _tensor(features_2)
    if min(len(f1), len(f2)) < subset_size:
        raise ValueError(f"KID subset size {subset_size} exceeds the number of samples ({len(f1)} and {len(f2)})")
    if subset_size < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples; got {subset_size}")
    out = kid_features_to_metric(f1, f2, kid_subsets=subsets, kid_subset_size=subset_size, rng_seed=seed,
                                 verbose=False)
    return out["kernel_inception_distance_mean"], out["kernel_inception_distance_std"]


def precision_recall(sample_features, reference_features, k: int = PRC_NEIGHBORHOOD) -> tuple[float, float]:
    """(precision, recall) of samples against a reference with k-nearest-neighbour manifolds."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    f1, f2 = _tensor(sample_features), _tensor(reference_features)
    if min(len(f1), len(f2)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples in each set; "
                         f"got {len(f1)} and {len(f2)}")
    out = prc_features_to_metric(f1, f2, prc_neighborhood=k, verbose=False)
    return out["precision"], out["recall"]


def class_accuracy(logits, labels) -> float:
    """Fraction of rows of ``logits`` whose argmax is the label."""
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    if len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"need as many labels as predictions (and at least one); got {len(logits)} and {len(labels)}")
    return float((logits.argmax(1) == labels).float().mean())


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, 10 log10(range^2 / MSE), of (N, C, H, W) batches."""
    if x.shape != y.shape:
        raise ValueError(f"PSNR of tensors of different shapes {tuple(x.shape)} and {tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004; Gaussian window, sigma 1.5) of (N, C, H, W) batches."""
    import kornia

    if x.shape != y.shape:
        raise ValueError(f"SSIM of tensors of different shapes {tuple(x.shape)} and {tuple(y.shape)}")
    return kornia.metrics.ssim(x.double(), y.double(), window, max_val=data_range, padding="valid").flatten(1).mean(1)
