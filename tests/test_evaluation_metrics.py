"""The metric code on synthetic features and images, against independent computations: FID of a set with
itself and between Gaussians (closed form), the Inception Score of designed logits, KID against a direct
MMD, precision/recall on constructed manifolds, PSNR and SSIM against known values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings, strategies as st

from ldm.evaluation import metrics as M


def gaussian_features(n: int, mean: np.ndarray, cov: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).multivariate_normal(mean, cov, size=n).astype(np.float32)


def closed_form_fid(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_of_a_set_with_itself_is_zero():
    f = gaussian_features(500, np.zeros(8), np.eye(8), seed=0)
    stats = M.feature_statistics(f)
    assert M.frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-8)


def test_fid_between_gaussians_equals_the_closed_form():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 6))
    s1 = a @ a.T + 0.5 * np.eye(6)
    s2 = np.diag(rng.uniform(0.5, 2.0, 6))
    mu1, mu2 = np.zeros(6), rng.normal(size=6)
    got = M.frechet_distance({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2})
    assert got == pytest.approx(closed_form_fid(mu1, s1, mu2, s2), rel=1e-9)
    # isotropic Gaussians: FID = |mu1 - mu2|^2 + d (s1 + s2 - 2 sqrt(s1 s2))
    d, v1, v2 = 4, 1.0, 4.0
    iso = M.frechet_distance({"mu": np.zeros(d), "sigma": v1 * np.eye(d)}, {"mu": np.full(d, 3.0), "sigma": v2 * np.eye(d)})
    assert iso == pytest.approx(d * 9.0 + d * (v1 + v2 - 2 * math.sqrt(v1 * v2)), rel=1e-12)


def test_fid_from_samples_approaches_the_population_value():
    mu2 = np.array([1.0, 0.0, -1.0])
    s2 = np.diag([1.0, 2.0, 0.5])
    a = gaussian_features(20000, np.zeros(3), np.eye(3), seed=2)
    b = gaussian_features(20000, mu2, s2, seed=3)
    got = M.frechet_distance(M.feature_statistics(a), M.feature_statistics(b))
    assert got == pytest.approx(closed_form_fid(np.zeros(3), np.eye(3), mu2, s2), rel=0.03)


def test_fid_is_undefined_with_fewer_samples_than_dimensions():
    assert M.fid_undefined_reason(100, 2048) is not None and "2048" in M.fid_undefined_reason(100, 2048)
    assert M.fid_undefined_reason(2049, 2048) is None
    with pytest.raises(ValueError, match="different feature dimensions"):
        M.frechet_distance({"mu": np.zeros(2), "sigma": np.eye(2)}, {"mu": np.zeros(3), "sigma": np.eye(3)})


def test_inception_score_of_designed_distributions():
    # every sample certain of its class, classes uniform over C in every split: IS = C
    c, n = 5, 1000
    logits = torch.full((n, c), -1e4)
    logits[torch.arange(n), torch.arange(n) % c] = 0.0
    mean, std = M.inception_score(logits, splits=10, shuffle=False)
    assert mean == pytest.approx(c, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    # certain predictions, marginal q over classes: IS = exp(H(q)); here q = (1/2, 1/4, 1/4)
    labels = torch.tensor([0, 0, 1, 2]).repeat(50)
    logits = torch.full((200, 3), -1e4)
    logits[torch.arange(200), labels] = 0.0
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert M.inception_score(logits, splits=5, shuffle=False)[0] == pytest.approx(math.exp(entropy), rel=1e-6)
    # every sample the same distribution: IS = 1
    mean, _ = M.inception_score(torch.randn(1, 7).repeat(200, 1), splits=4)
    assert mean == pytest.approx(1.0, abs=1e-9)
    # independent computation: exp(mean KL(p(y|x) || p(y))) on one split
    logits = torch.randn(300, 6, generator=torch.Generator().manual_seed(0)) * 2
    p = logits.double().softmax(1)
    kl = (p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean()
    assert M.inception_score(logits, splits=1)[0] == pytest.approx(float(kl.exp()), rel=1e-9)


def test_inception_score_needs_a_sample_per_split():
    with pytest.raises(ValueError, match="10 splits"):
        M.inception_score(torch.randn(5, 3), splits=10)


def direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written out."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def test_kid_against_a_direct_mmd():
    x = gaussian_features(40, np.zeros(5), np.eye(5), seed=4).astype(np.float64)
    y = gaussian_features(40, np.full(5, 0.5), np.eye(5), seed=5).astype(np.float64)
    mean, std = M.kernel_distance(x, y, subsets=3, subset_size=40)  # subsets of the whole sets: all equal
    assert mean == pytest.approx(direct_mmd2(x, y), rel=1e-5) and std == pytest.approx(0.0, abs=1e-5 * mean)
    same, _ = M.kernel_distance(x, x.copy(), subsets=5, subset_size=20)
    far, _ = M.kernel_distance(x, y + 3, subsets=5, subset_size=20)
    assert abs(same) < far
    with pytest.raises(ValueError, match="exceeds the number of samples"):
        M.kernel_distance(x, y, subset_size=100)


def test_precision_recall_on_constructed_manifolds():
    rng = np.random.default_rng(6)
    reference = rng.uniform(0, 1, size=(400, 2))
    # samples inside the reference square: precision ~1; they cover only its left half: recall ~0.5
    left = rng.uniform(0, 1, size=(400, 2)) * np.array([0.5, 1.0])
    precision, recall = M.precision_recall(left, reference, k=3)
    assert precision > 0.95
    assert 0.4 < recall < 0.65
    # samples far away: precision 0 and recall 0
    precision, recall = M.precision_recall(reference + 10.0, reference, k=3)
    assert precision == 0.0 and recall == 0.0
    # the same set: both 1
    precision, recall = M.precision_recall(reference, reference, k=3)
    assert precision == 1.0 and recall == 1.0
    with pytest.raises(ValueError, match="k=3"):
        M.precision_recall(reference[:3], reference, k=3)


def test_precision_recall_against_a_brute_force_count():
    rng = np.random.default_rng(7)
    gen, real = rng.normal(size=(60, 3)), rng.normal(0.3, 1.2, size=(50, 3))

    def inside(points, manifold, k):
        d_m = np.linalg.norm(manifold[:, None] - manifold[None], axis=-1)
        radius = np.sort(d_m, axis=1)[:, k]  # k-th neighbour, the point itself being the 0-th
        d = np.linalg.norm(points[:, None] - manifold[None], axis=-1)
        return float((d <= radius[None]).any(1).mean())

    precision, recall = M.precision_recall(gen, real, k=3)
    assert precision == pytest.approx(inside(gen, real, 3), abs=1e-6)
    assert recall == pytest.approx(inside(real, gen, 3), abs=1e-6)


def test_psnr_known_values():
    x = torch.zeros(2, 3, 8, 8)
    assert M.psnr(x, x + 0.1).tolist() == pytest.approx([20.0, 20.0], abs=1e-5)
    assert M.psnr(x, x + 0.01).tolist() == pytest.approx([40.0, 40.0], abs=1e-4)
    assert M.psnr(x, x + 2.0, data_range=2.0).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert math.isinf(M.psnr(x, x)[0].item())


@settings(max_examples=20, deadline=None)
@given(a=st.floats(0.05, 0.95), c=st.floats(-0.05, 0.05))
def test_ssim_of_constant_images_is_the_luminance_term(a, c):
    """For constant images every window has zero variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1)."""
    x = torch.full((1, 1, 16, 16), a)
    y = torch.full((1, 1, 16, 16), a + c)
    c1 = 0.01 ** 2
    expected = (2 * a * (a + c) + c1) / (a * a + (a + c) ** 2 + c1)
    assert M.ssim(x, y).item() == pytest.approx(expected, abs=1e-5)


def test_ssim_identity_and_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    assert M.ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    s = M.ssim(x, noisy)
    assert (s < 0.9).all() and (s > 0).all()
    with pytest.raises(ValueError, match="different shapes"):
        M.ssim(x, x[:, :, :16])


def test_class_accuracy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    assert M.class_accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="as many labels"):
        M.class_accuracy(logits, torch.tensor([0]))
