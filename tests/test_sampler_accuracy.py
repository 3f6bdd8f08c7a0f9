"""The sampler-accuracy benchmark's known answer and its signed error (the figures themselves are a benchmark)."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from conftest import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sampler_accuracy", REPO / "benchmarks" / "sampler_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exact_solution_per_dimension_matches_one_std_at_a_time(bench):
    mu = torch.randn(bench.SHAPE, dtype=torch.float64)
    std = torch.linspace(0.05, 1.0, mu.numel(), dtype=torch.float64).view(bench.SHAPE)
    x = torch.randn((2, *bench.SHAPE), dtype=torch.float64) * 10
    both = bench.GaussianData(mu, std).exact(x, 10.0, 0.03)
    for k in (0, 100, mu.numel() - 1):
        one = bench.GaussianData(mu, float(std.flatten()[k])).exact(x, 10.0, 0.03)
        torch.testing.assert_close(both.flatten(1)[:, k], one.flatten(1)[:, k], rtol=1e-12, atol=0)


def test_the_exact_solution_solves_the_ode(bench):
    """d x / d sigma = (x - D(x, sigma)) / sigma along the closed-form path, D the model's own denoiser."""
    mu, sigma, h = torch.zeros(bench.SHAPE, dtype=torch.float64), 2.0, 1e-3
    model = bench.GaussianData(mu, 0.3)
    x_T = torch.randn((1, *bench.SHAPE), dtype=torch.float64)
    x = model.exact(x_T, 20.0, sigma)
    slope = (model.exact(x_T, 20.0, sigma + h) - model.exact(x_T, 20.0, sigma - h)) / (2 * h)
    t = torch.full((1,), model.schedule.t(sigma), dtype=torch.float64)
    eps = model.apply_model(x / math.sqrt(1 + sigma ** 2), t)
    torch.testing.assert_close(slope, eps, rtol=1e-5, atol=1e-7)


def test_signed_error_tells_too_spread_from_too_concentrated(bench):
    mu, exact = torch.zeros(3), torch.tensor([1.0, -2.0, 0.5])
    assert bench.signed_rms(1.1 * exact, exact, mu, 0.0) == pytest.approx(0.1 * exact.pow(2).mean().sqrt().item())
    assert bench.signed_rms(0.9 * exact, exact, mu, 0.0) == pytest.approx(-0.1 * exact.pow(2).mean().sqrt().item())


def test_tables_print_and_the_best_sampler_beats_the_karras_reference(bench, capsys):
    assert bench.main(["--nfe", "10", "--std", "0.5", "--n", "2"]) == 0
    assert torch.get_default_dtype() == torch.float32  # main() computes in float64 and restores the default
    out = capsys.readouterr().out
    assert "data N(mu, 0.5^2 I)" in out and "s from 0.05 to 1.0 over the dimensions" in out
    assert out.rstrip().endswith("PASS")


def test_bad_spread_is_refused(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--spread", "1.0", "0.05"])
    assert "--spread needs 0 < LO <= HI; got 1.0 0.05" in capsys.readouterr().err
