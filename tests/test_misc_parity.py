"""The `misc` parity case: beta schedules, timestep embeddings, DDIM steps and parameters, the diagonal Gaussian,
normal_kl and LitEma against the original; plus the behaviours around them (errors, deterministic posterior,
EMA store/restore)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_close, load_case
from ldm.modules.diffusionmodules.util import (
    betas_for_alpha_bar,
    extract_into_tensor,
    make_beta_schedule,
    make_ddim_sampling_parameters,
    make_ddim_timesteps,
    noise_like,
    timestep_embedding,
)
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution, DiracDistribution, normal_kl
from ldm.modules.ema import LitEma


@pytest.fixture(scope="module")
def case():
    return load_case("misc")


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sqrt_linear", "sqrt"])
def test_beta_schedules(case, schedule):
    betas = make_beta_schedule(schedule, 1000, linear_start=1e-4, linear_end=2e-2, cosine_s=8e-3)
    assert isinstance(betas, np.ndarray) and betas.dtype == np.float64
    assert_close(torch.from_numpy(betas), case["outputs"][f"beta_schedule/{schedule}"], schedule)


def test_unknown_beta_schedule_is_named():
    with pytest.raises(ValueError, match="'quadratic'"):
        make_beta_schedule("quadratic", 10)


@pytest.mark.parametrize("dim", [320, 33])
def test_timestep_embedding(case, dim):
    t = case["inputs"]["t"]
    assert_close(timestep_embedding(t, dim), case["outputs"][f"timestep_embedding/{dim}"], f"dim {dim}")
    assert torch.equal(timestep_embedding(t, 4, repeat_only=True), t[:, None].repeat(1, 4))


@pytest.mark.parametrize("method", ["uniform", "quad"])
def test_ddim_timesteps(case, method):
    steps = make_ddim_timesteps(method, 50, 1000, verbose=False)
    assert_close(torch.from_numpy(np.asarray(steps)), case["outputs"][f"ddim_timesteps/{method}/50"], method)
    with pytest.raises(ValueError, match="'cubic'"):
        make_ddim_timesteps("cubic", 50, 1000)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_ddim_sampling_parameters(case, as_tensor):
    alphacums = np.cumprod(1.0 - make_beta_schedule("linear", 1000, linear_start=0.00085, linear_end=0.012))
    if as_tensor:
        alphacums = torch.from_numpy(alphacums)
    steps = make_ddim_timesteps("uniform", 50, 1000, verbose=False)
    sigmas, alphas, alphas_prev = make_ddim_sampling_parameters(alphacums, steps, eta=0.5, verbose=False)
    assert isinstance(sigmas, torch.Tensor) == as_tensor
    out = case["outputs"]
    assert_close(torch.as_tensor(sigmas), out["ddim_params/sigmas"], "sigmas")
    assert_close(torch.as_tensor(alphas), out["ddim_params/alphas"], "alphas")
    assert_close(torch.as_tensor(alphas_prev), out["ddim_params/alphas_prev"], "alphas_prev")


def test_diagonal_gaussian(case):
    inputs, out = case["inputs"], case["outputs"]
    dist = DiagonalGaussianDistribution(inputs["gauss_params"])
    assert_close(dist.kl(), out["gauss/kl"], "kl")
    assert_close(dist.nll(inputs["gauss_x"]), out["gauss/nll"], "nll")
    assert_close(dist.mode(), out["gauss/mode"], "mode")
    assert_close(dist.std, out["gauss/std"], "std")


def test_diagonal_gaussian_sampling_and_deterministic_mode():
    params = torch.randn(2, 6, 3, 3)
    params[:, 3:] = 100.0  # log-variance beyond the clamp
    dist = DiagonalGaussianDistribution(params)
    assert torch.all(dist.logvar == 20.0)
    torch.manual_seed(5)
    a = dist.sample()
    torch.manual_seed(5)
    assert torch.equal(a, dist.mean + dist.std * torch.randn(dist.mean.shape))
    det = DiagonalGaussianDistribution(params, deterministic=True)
    assert torch.equal(det.sample(), det.mean) and det.kl().item() == 0.0 and det.nll(a).item() == 0.0
    other = DiagonalGaussianDistribution(torch.zeros(2, 6, 3, 3))
    assert_close(DiagonalGaussianDistribution(torch.zeros(2, 6, 3, 3)).kl(other), torch.zeros(2), "kl to itself")
    assert torch.equal(DiracDistribution(a).sample(), a)
    with pytest.raises(ValueError, match="even"):
        DiagonalGaussianDistribution(torch.randn(1, 3, 2, 2))


def test_normal_kl(case):
    p, x = case["inputs"]["gauss_params"], case["inputs"]["gauss_x"]
    assert_close(normal_kl(x, p[:, :4], 0.5 * x, p[:, 4:]), case["outputs"]["normal_kl"], "normal_kl")
    assert_close(normal_kl(x, 0.0, x, 0.0), torch.zeros_like(x), "scalars broadcast")
    with pytest.raises(TypeError, match="tensor"):
        normal_kl(0.0, 0.0, 1.0, 0.0)


def _ema_protocol():
    torch.manual_seed(11)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    ema = LitEma(net)
    for i in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p += 0.1 * (i + 1)
        ema(net)
    return net, ema


def test_lit_ema(case):
    _, ema = _ema_protocol()
    ours = ema.state_dict()
    ref = {k[len("ema/"):]: v for k, v in case["outputs"].items() if k.startswith("ema/")}
    assert sorted(ours) == sorted(ref)
    for key, value in ref.items():
        assert ours[key].dtype == value.dtype, key
        assert_close(ours[key], value, f"ema/{key}")


def test_lit_ema_copy_store_restore():
    net, ema = _ema_protocol()
    original = [p.detach().clone() for p in net.parameters()]
    ema.store(net.parameters())
    ema.copy_to(net)
    assert torch.equal(net[0].weight, ema.get_buffer("0weight"))
    assert not torch.equal(net[0].weight, original[0])
    ema.restore(net.parameters())
    assert all(torch.equal(p, o) for p, o in zip(net.parameters(), original))
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    assert [k for k in LitEma(frozen).state_dict()] == ["decay", "num_updates"]
    without_warmup = LitEma(net, decay=0.5, use_num_upates=False)
    assert without_warmup.num_updates.item() == -1
    with pytest.raises(ValueError, match="between 0 and 1"):
        LitEma(net, decay=1.5)


def test_small_helpers():
    a = torch.arange(10.0)
    out = extract_into_tensor(a, torch.tensor([2, 7]), (2, 3, 4, 4))
    assert out.shape == (2, 1, 1, 1) and out.flatten().tolist() == [2.0, 7.0]
    betas = betas_for_alpha_bar(10, lambda t: 1 - t, max_beta=0.5)
    assert betas.shape == (10,) and betas.max() == 0.5
    torch.manual_seed(0)
    shared = noise_like((3, 2, 2), "cpu", repeat=True)
    assert torch.equal(shared[0], shared[2])
