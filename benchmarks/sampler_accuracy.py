"""How accurately each sampler solves the probability-flow ODE, on data whose exact solution is known.

For data distributed as N(mu, s^2 I), the optimal denoiser is closed-form at every noise level:
E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu) in the variance-exploding scale x = x0 + sigma * eps
(Karras et al. 2022), hence E[eps | x_t] too; and the probability-flow ODE (Song et al. 2021) maps
quantiles, so its solution from x_T is x(sigma) = mu + sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2)
(x_T - mu). A model that returns this exact noise prediction, on the noise schedule of the LDM
configs (linear in sqrt(beta) from 0.0015 to 0.0195 over 1000 steps), leaves each sampler's own
discretization error as the only error: the table gives the RMS distance between a sampler's output
and the exact solution from the same x_T (drawn at the sampler's first noise level) to the same
final level (training step 0, where every sampler here stops), for a budget of model evaluations,
counted (Heun uses two per step, PLMS two in its first step). Steps are added while they fit into
the budget.

For such data every deterministic sampler maps x_T to mu + g (x_T - mu) for one gain g, so each entry of
the tables for one s is a single number |g - g_exact| that passes through zero as the grid changes: the
tables print it signed (+: the samples come out too spread, -: too concentrated), and a small entry
between entries of opposite signs is luck. The last table gives every dimension of the data its own s,
spread evenly in log s over ``--spread`` (default 0.05 to 1), so that each entry averages over many
gains and the errors fall smoothly with the budget.

    python benchmarks/sampler_accuracy.py
    python benchmarks/sampler_accuracy.py --nfe 5 10 20 50 --std 0.5 0.1 --spread 0.05 1

Rows: every registered sampler as ``--sampler NAME`` runs it (but ``ddpm``, which samples the SDE),
then the reference points: DPMSolverSampler with ``lower_order_final=True`` (the DPM-Solver reference rule) and
DPM-Solver++(2M) on the Karras grid as k-diffusion's ``sample_dpmpp_2m`` takes it (run through
k-diffusion itself when it is installed, checked to agree with the project's step function).
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch

from ldm.models.diffusion.denoiser import DiscreteSchedule
from ldm.models.diffusion.dpm_solver import DPMSolverSampler
from ldm.models.diffusion.gaussian_diffusion import GaussianDiffusion
from ldm.models.diffusion.sampling import SAMPLERS, dpmpp, make_sampler, sample

LINEAR_START, LINEAR_END, TIMESTEPS = 0.0015, 0.0195, 1000  # the schedule of most LDM configs
SHAPE = (4, 8, 8)  # one latent
EARLIER = "DPMSolverSampler, first-order final step below 10 steps"


class GaussianData(torch.nn.Module):
    """A "model" whose noise prediction is the exact E[eps | x_t] for data ~ N(mu, diag(std^2)), at any step t
    (``std`` a number, or a tensor of the data's shape)."""

    parameterization = "eps"
    num_timesteps = TIMESTEPS

    def __init__(self, mu: torch.Tensor, std: float):
        super().__init__()
        betas = torch.linspace(LINEAR_START ** 0.5, LINEAR_END ** 0.5, TIMESTEPS, dtype=torch.float64) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, 0))
        self.schedule = DiscreteSchedule(self.alphas_cumprod)
        self.mu, self.std = mu, std

    @property
    def diffusion(self) -> GaussianDiffusion:
        return GaussianDiffusion.from_alphas_cumprod(self.alphas_cumprod, parameterization=self.parameterization)

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        # sigma at (possibly fractional) steps t, interpolating log sigma linearly as the denoiser's t(sigma) does
        log_sigma = np.interp(t.double().cpu().numpy(), np.arange(TIMESTEPS), self.schedule.log_sigmas.numpy())
        sigma = torch.from_numpy(log_sigma).exp().view(-1, *([1] * (x.dim() - 1)))  # (B, 1, 1, 1)
        x_ve = x * (1 + sigma ** 2).sqrt()
        denoised = self.mu + self.std ** 2 / (self.std ** 2 + sigma ** 2) * (x_ve - self.mu)
        return (x_ve - denoised) / sigma

    def exact(self, x_ve: torch.Tensor, sigma_start: float, sigma_end: float) -> torch.Tensor:
        """The probability-flow ODE solution from ``x_ve`` at ``sigma_start`` to ``sigma_end`` (VE scale)."""
        s2 = torch.as_tensor(self.std, dtype=x_ve.dtype) ** 2
        return self.mu + ((s2 + sigma_end ** 2) / (s2 + sigma_start ** 2)).sqrt() * (x_ve - self.mu)


class Counted:
    """A denoiser that counts its evaluations."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.denoiser(x, sigma)


def k_diffusion_dpmpp_2m():
    """k-diffusion's ``sample_dpmpp_2m`` and ``CompVisDenoiser`` when the package can be imported, else None."""
    try:
        from k_diffusion.external import CompVisDenoiser
        from k_diffusion.sampling import sample_dpmpp_2m
    except ImportError:
        return None
    return sample_dpmpp_2m, CompVisDenoiser


def run(step, model, x_T, sigmas, **options):
    """(RMS error of the VP output against the exact solution, model evaluations); the error is negative
    when the output lies closer to mu than the exact solution does."""
    denoiser = Counted(model.diffusion.denoiser(model.apply_model))
    x_ve = x_T * math.sqrt(1 + sigmas[0] ** 2)
    out = sample(step, denoiser, x_ve, sigmas, **options)
    return signed_rms(out, model.exact(x_ve, sigmas[0], sigmas[-1]), model.mu, sigmas[-1]), denoiser.calls


def signed_rms(out: torch.Tensor, exact: torch.Tensor, mu: torch.Tensor, sigma_end: float) -> float:
    """RMS of ``out - exact`` in the VP scale at ``sigma_end``, signed by whether ``out`` overshoots."""
    error = (out - exact) / math.sqrt(1 + sigma_end ** 2)
    return math.copysign(error.pow(2).mean().sqrt().item(), float((error * (exact - mu)).sum()))


def within_budget(make_run, budget: int):
    """The run of ``make_run(steps)`` with the most steps that fit into ``budget`` model evaluations."""
    for steps in range(budget, 0, -1):
        err, calls = make_run(steps)
        if calls <= budget:
            return err, calls
    raise ValueError(f"no run fits into {budget} model evaluations")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50], help="model-evaluation budgets")
    parser.add_argument("--std", type=float, nargs="+", default=[0.5, 0.1], help="data standard deviations s")
    parser.add_argument("--spread", type=float, nargs=2, default=[0.05, 1.0], metavar=("LO", "HI"),
                        help="the last table's range of s over the data's dimensions (evenly in log s)")
    parser.add_argument("--n", type=int, default=16, help="samples per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of mu and x_T")
    opt = parser.parse_args(argv)
    if not 0 < opt.spread[0] <= opt.spread[1]:
        parser.error(f"--spread needs 0 < LO <= HI; got {opt.spread[0]} {opt.spread[1]}")
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return report(opt)
    finally:
        torch.set_default_dtype(dtype)  # leave the caller's default as it was


def report(opt: argparse.Namespace) -> int:
    """Print the tables; 0 when the best registered sampler beats the Karras-grid reference at every budget."""
    gen = torch.Generator().manual_seed(opt.seed)
    mu = torch.randn(SHAPE, generator=gen)
    x_T = torch.randn((opt.n, *SHAPE), generator=gen)
    spread = torch.logspace(math.log10(opt.spread[0]), math.log10(opt.spread[1]), mu.numel()).view(SHAPE)
    datasets = [(f"N(mu, {std}^2 I)", std) for std in opt.std]
    datasets.append((f"N(mu, diag(s^2)), s from {opt.spread[0]} to {opt.spread[1]} over the dimensions", spread))
    kd = k_diffusion_dpmpp_2m()
    ok = True
    for data, std in datasets:
        model = GaussianData(mu, std)
        schedule = model.schedule
        rows: dict[str, list[float]] = {}
        for name in SAMPLERS:
            if SAMPLERS[name].fixed_steps:
                continue  # ddpm: stochastic, over all 1000 steps: it samples the SDE, not the ODE
            sampler = make_sampler(name, model)  # its grid and options, as --sampler NAME runs it
            rows[f"{name} ({sampler.spec.spacing} grid)"] = [within_budget(
                lambda S: run(sampler.step, model, x_T, sampler.sigmas(S), **sampler.options(0.0, S)), b)[0]
                for b in opt.nfe]
        best = [min(abs(errors[j]) for errors in rows.values()) for j in range(len(opt.nfe))]
        before = DPMSolverSampler(model, lower_order_final=True)
        rows[EARLIER] = [within_budget(
            lambda S: run(dpmpp, model, x_T, before.sigmas(S), **before.options(0.0, S)), b)[0] for b in opt.nfe]
        karras = [within_budget(lambda S: run(dpmpp, model, x_T, schedule.grid(S, "karras").tolist()), b)[0]
                  for b in opt.nfe]
        label = "DPM-Solver++(2M), Karras grid (k-diffusion's sample_dpmpp_2m)"
        if kd is not None:
            sample_dpmpp_2m, CompVisDenoiser = kd
            kd_errors = []
            for b in opt.nfe:
                sigmas = schedule.grid(b, "karras")
                x_ve = x_T * math.sqrt(1 + float(sigmas[0]) ** 2)
                out = sample_dpmpp_2m(CompVisDenoiser(model), x_ve, sigmas, disable=True)
                kd_errors.append(signed_rms(out, model.exact(x_ve, float(sigmas[0]), float(sigmas[-1])), mu,
                                            float(sigmas[-1])))
            agree = max(abs(a - b) / abs(b) for a, b in zip(kd_errors, karras))
            label = f"k-diffusion sample_dpmpp_2m, Karras grid (project's step agrees to {agree:.0e})"
            karras = kd_errors
        rows[label] = karras
        print(f"\ndata {data}, {opt.n} samples of {SHAPE}; RMS error against the exact ODE solution"
              + (" (signed: + too spread, - too concentrated)" if isinstance(std, float) else ""))
        print(f"{'sampler':66s}" + "".join(f"{f'{b} NFE':>10s}" for b in opt.nfe))
        for name, errors in rows.items():
            cells = [f"{e:+10.1e}" if isinstance(std, float) else f"{abs(e):10.1e}" for e in errors]
            print(f"{name:66s}" + "".join(cells))
        print(f"{'best registered sampler':66s}" + "".join(f"{e:10.1e}" for e in best))
        print(f"{'  vs DPM-Solver++(2M) on the Karras grid (ratio, >= 1 is as good)':66s}"
              + "".join(f"{abs(k) / e:10.1f}" for k, e in zip(karras, best)))
        print(f"{'  vs DPMSolverSampler, first-order final step < 10 (ratio)':66s}"
              + "".join(f"{abs(o) / e:10.1f}" for o, e in zip(rows[EARLIER], best)))
        ok &= all(e <= abs(k) for e, k in zip(best, karras))
    print("\nthe best registered sampler is at least as accurate as DPM-Solver++(2M) on the Karras grid at every "
          f"budget: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
