"""Samplers as step functions over a denoiser and a grid of noise levels, the loop that runs any of them, and
the class that gives them the original samplers' ``.sample(...)``.

A step ``step(model, x, sigmas, i, state, noise, **options) -> (x_next, denoised)`` takes x = x0 + sigma * eps
from ``sigmas[i]`` to ``sigmas[i + 1]``, calling the `Denoiser` ``model(x, sigma)`` (the x0 prediction) as
often as it needs; ``state`` is the list a multistep method keeps, ``noise(x, i)`` the noise of step i.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from ldm.models.diffusion.denoiser import Denoiser, DiscreteSchedule, batch_size_of
from ldm.sampler_registry import (SAMPLER_ALIASES, SAMPLERS, SamplerSpec, check_sampler_options,  # noqa: F401 (re-exported)
                          resolve_sampler_name, sampler_names)
from ldm.util import get_obj_from_str

logger = logging.getLogger(__name__)
#: Adams-Bashforth weights of the newest and the older eps estimates, by the number of older ones.
ADAMS_BASHFORTH = {1: (3 / 2, -1 / 2), 2: (23 / 12, -16 / 12, 5 / 12), 3: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def scaled_noise(temperature: float = 1.0, noise_dropout: float = 0.0) -> Callable:
    """``noise(x, i)``: standard normal noise like x from the global generator (so a seed fixes the samples), times
    ``temperature``, with dropout of rate ``noise_dropout`` (the original samplers' options)."""
    def noise(x: torch.Tensor, i: int) -> torch.Tensor:
        z = torch.randn_like(x) * temperature
        return torch.nn.functional.dropout(z, p=noise_dropout) if noise_dropout > 0.0 else z

    return noise


def sample(step: Callable, model: Callable, x: torch.Tensor, sigmas: Sequence[float], noise: Callable = scaled_noise(),
           callback: Callable | None = None, desc: str | None = None, **options: Any) -> torch.Tensor:
    """Run ``step`` from x at ``sigmas[0]`` down to ``sigmas[-1]``; ``callback(i, x, denoised)`` after each step."""
    sigmas, state = [float(s) for s in sigmas], []
    for i in tqdm(range(len(sigmas) - 1), desc=desc, disable=desc is None):
        x, denoised = step(model, x, sigmas, i, state, noise, **options)
        if callback is not None:
            callback(i, x, denoised)
    return x


def inpainting(step: Callable, mask: torch.Tensor, x0: torch.Tensor) -> Callable:
    """``step`` with the region where ``mask`` is 1 reset to ``x0`` noised to the current level before each step:
    the replacement method (Song et al., ICLR 2021, appendix I.2), as the original samplers inpaint."""
    def masked_step(model, x, sigmas, i, state, noise, **options):
        x = mask * (x0 + sigmas[i] * torch.randn_like(x0)) + (1.0 - mask) * x
        return step(model, x, sigmas, i, state, noise, **options)

    return masked_step


def history(state: list, out: torch.Tensor, sigmas: Sequence[float], i: int, order: int,
            lower_order_final: bool) -> tuple[list[float], list[torch.Tensor]]:
    """Record step i's output in a multistep method's ``state``; return lambda = -log sigma and the output of
    this step and of the previous ones the step extrapolates from (newest first): up to ``order`` in all, fewer
    at the start and, with ``lower_order_final``, towards the end."""
    p = min(order, i + 1, len(sigmas) - 1 - i if lower_order_final else order)
    entries = [[-math.log(sigmas[i]), out, None], *reversed(state[len(state) - p + 1:] if p > 1 else [])]
    state.append(entries[0])  # [lambda, output, what the method keeps for the next step]
    return [e[0] for e in entries], [e[1] for e in entries]


def ancestral(model, x, sigmas, i, state, noise, eta: float = 1.0):
    """DDIM (Song et al. 2021, eqs. 12 and 16); with eta = 1 on every step, DDPM (Ho et al. 2020, Algorithm 2)."""
    s, s_next = sigmas[i], sigmas[i + 1]
    denoised = model(x, s)
    up = min(s_next, eta * math.sqrt(max(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2, 0.0)))
    z = noise(x, i)  # drawn even when unused (eta = 0), as by the original, so a seed gives its images
    return denoised + math.sqrt(s_next ** 2 - up ** 2) / s * (x - denoised) + up * z, denoised


def plms(model, x, sigmas, i, state, noise):
    """PLMS (Liu et al. 2022, eq. 12): Adams-Bashforth on eps over four steps, a pseudo improved-Euler first."""
    s, s_next = sigmas[i], sigmas[i + 1]
    eps = (x - model(x, s)) / s
    noise(x, i)  # the original draws (unused) noise once per DDIM update; kept so a seed gives its images
    if not state:
        noise(x, i)
        x_euler = x + (s_next - s) * eps
        eps_prime = eps if s_next == 0 else (eps + (x_euler - model(x_euler, s_next)) / s_next) / 2
    else:
        eps_prime = sum(w * e for w, e in zip(ADAMS_BASHFORTH[len(state)], [eps, *reversed(state)]))
    state[:] = [*state[-2:], eps]
    return x + (s_next - s) * eps_prime, x - s * eps_prime


def dpmpp(model, x, sigmas, i, state, noise, order: int = 2, lower_order_final: bool = False, predict: str = "x0"):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) and 3M; ``predict="eps"``: multistep DPM-Solver (NeurIPS 2022)."""
    s, s_next = sigmas[i], sigmas[i + 1]
    denoised = model(x, s)
    lam, out = history(state, denoised if predict == "x0" else (x - denoised) / s, sigmas, i, order, lower_order_final)
    if s_next == 0:  # lambda = inf: the first-order step, x = denoised, is all there is
        return denoised, denoised
    h = math.log(s / s_next)
    if predict == "x0" and order == 2 and len(out) == 2:  # Lu et al. 2022, Algorithm 2
        x_next = (s_next / s) * x - math.expm1(-h) * denoised
        return x_next - math.expm1(-h) * (denoised - out[1]) / (2 * (lam[0] - lam[1]) / h), denoised
    # out(lambda) ~ out[0] + a1 tau + a2 tau^2 (tau = lambda - lam[0], from divided differences), integrated
    # against e^(tau - h) (x0) or s_next e^(h - tau) (eps): phi_k(z) = e^z - sum_{j <= k} z^j / j!
    z = -h if predict == "x0" else h
    phi = (math.expm1(z), math.expm1(z) - z, math.expm1(z) - z - z * z / 2)
    a1 = a2 = 0.0
    if len(out) > 1:
        a1 = (out[0] - out[1]) / (lam[0] - lam[1])
    if len(out) > 2:
        a2 = (a1 - (out[1] - out[2]) / (lam[1] - lam[2])) / (lam[0] - lam[2])
        a1 = a1 + a2 * (lam[0] - lam[1])
    if predict == "x0":
        return (s_next / s) * x - phi[0] * denoised + phi[1] * a1 - 2 * phi[2] * a2, denoised
    return x - s_next * (phi[0] * out[0] + phi[1] * a1 + 2 * phi[2] * a2), denoised


def unipc(model, x, sigmas, i, state, noise, order: int = 3, lower_order_final: bool = False):
    """UniPC (Zhao et al. 2023, Algorithms 1-2, B(h) = e^h - 1): UniP predictor, UniC corrector at no extra cost."""
    s, s_next = sigmas[i], sigmas[i + 1]
    denoised = model(x, s)
    if state and state[-1][2] is not None:  # correct x_i with the evaluation at the predicted x_i
        b_h, corr_res, rho, d_prev, pred_res = state[-1][2]
        x = x - b_h * (corr_res + rho * (denoised - d_prev) - pred_res)
    lam, out = history(state, denoised, sigmas, i, order, lower_order_final)
    if s_next == 0:
        return denoised, denoised
    p, h = len(out), math.log(s / s_next)
    rks = [(lam_k - lam[0]) / h for lam_k in lam[1:]] + [1.0]
    d1s = [(d - denoised) / rk for d, rk in zip(out[1:], rks)]
    b_h = math.expm1(-h)
    h_phi, factorial, b = math.expm1(-h) / -h - 1, 1, []
    for k in range(1, p + 1):
        b.append(h_phi * factorial / b_h)
        factorial *= k + 1
        h_phi = h_phi / -h - 1 / factorial
    R = torch.tensor([[rk ** (k - 1) for rk in rks] for k in range(1, p + 1)], dtype=torch.float64)
    b = torch.tensor(b, dtype=torch.float64)
    rhos_p = [0.5] if p == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist() if p > 2 else []
    rhos_c = [0.5] if p == 1 else torch.linalg.solve(R, b).tolist()
    pred_res = sum(r * d for r, d in zip(rhos_p, d1s)) if d1s else 0.0
    corr_res = sum(r * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0.0
    if i < len(sigmas) - 2:  # the last step goes uncorrected: correcting it would cost one more evaluation
        state[-1][2] = (b_h, corr_res, rhos_c[-1], denoised, pred_res)
    return (s_next / s) * x - b_h * denoised - b_h * pred_res, denoised


def heun(model, x, sigmas, i, state, noise):
    """Heun's method (Karras et al. 2022, Algorithm 1 without churn); Euler for a step to sigma = 0."""
    s, s_next = sigmas[i], sigmas[i + 1]
    denoised = model(x, s)
    d = (x - denoised) / s
    x_next = x + (s_next - s) * d
    if s_next == 0:
        return x_next, denoised
    return x + (s_next - s) * (d + (x_next - model(x_next, s_next)) / s_next) / 2, denoised


def make_sampler(name: str, model: torch.nn.Module) -> Any:
    """The sampler called ``name`` around ``model``, with the original samplers' ``.sample(...)``."""
    key = resolve_sampler_name(name)
    return get_obj_from_str(SAMPLERS[key].adapter, where=f"sampler {key!r}")(model, name=key)


class Sampler:
    """A registered sampler behind the original samplers' interface: ``Sampler(model).sample(S, batch_size,
    shape, conditioning, ...)`` returns ``(samples, {"x_inter": [...], "pred_x0": [...]})``, in the model's
    (VP) scale; ``S`` steps on the sampler's default grid unless ``sigmas`` gives one."""

    name = "ddim"  # the registry entry

    def __init__(self, model: torch.nn.Module, name: str | None = None):
        # a DDPM / LatentDiffusion, or any object with apply_model(x, t, cond), quantize_latent(x0) (for
        # quantize_x0) and a `diffusion` property: the GaussianDiffusion process with its schedule
        self.model = model
        self.name = resolve_sampler_name(name or self.name)
        self.spec = SAMPLERS[self.name]
        self.step = self.spec.step if callable(self.spec.step) else globals()[self.spec.step]
        self.spacing = self.spec.spacing  # the grid of noise levels (see DiscreteSchedule.grid)

    def sigmas(self, S: int | None) -> list[float]:
        """The noise levels of an ``S``-step run, from the first step's to the last."""
        if S is None:
            raise ValueError(f"sampler {self.name!r} needs the number of steps S; got None")
        return DiscreteSchedule(self.model.diffusion.alphas_cumprod).grid(int(S), self.spacing).tolist()

    def options(self, eta: float, n: int) -> dict:
        """The step function's options for an ``n``-step run with ``eta``."""
        return {**self.spec.options, **({"eta": eta} if self.spec.takes_eta else {})}

    def denoiser(self, cond: Any = None, uc: Any = None, scale: float = 1.0, quantize_x0: bool = False,
                 score_corrector: Any = None, corrector_kwargs: dict | None = None,
                 network: Callable | None = None) -> Denoiser:
        """The model's denoiser; ``score_corrector.modify_score(model, out, x, t, c, **corrector_kwargs)`` as the
        original samplers call it; ``network(x, t, cond)`` in place of the model's ``apply_model``."""
        def corrector(out, x, t, c):
            return score_corrector.modify_score(self.model, out, x, t, c, **(corrector_kwargs or {}))

        return self.model.diffusion.denoiser(network or self.model.apply_model, cond, uc, scale,
                                             denoised_fn=self.model.quantize_latent if quantize_x0 else None,
                                             score_corrector=None if score_corrector is None else corrector)

    @torch.no_grad()
    def sample(self, S: int | None, batch_size: int, shape: Sequence[int], conditioning: Any = None,
               callback: Callable | None = None, normals_sequence: Any = None, img_callback: Callable | None = None,
               quantize_x0: bool = False, eta: float = 0.0, mask: torch.Tensor | None = None,
               x0: torch.Tensor | None = None, temperature: float = 1.0, noise_dropout: float = 0.0,
               score_corrector: Any = None, corrector_kwargs: dict | None = None, verbose: bool = True,
               x_T: torch.Tensor | None = None, log_every_t: int = 100, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None, sigmas: Sequence[float] | None = None, **kwargs: Any):
        """``batch_size`` samples of ``shape`` (C, H, W) in ``S`` steps; returns (samples, intermediates).
        Further keyword arguments are accepted and ignored, as by the original samplers."""
        check_sampler_options(self.name, eta)
        unsupported = [("normals_sequence", normals_sequence, None), ("temperature", temperature, 1.0),
                       ("noise_dropout", noise_dropout, 0.0)][:1 if self.spec.takes_eta else 3]
        for option, value, default in unsupported:
            if value is not default and value != default:
                raise ValueError(f"{type(self).__name__} does not support {option}={value!r}; leave it at {default!r}")
        if batch_size_of(conditioning) not in (None, batch_size):
            logger.warning("got %d conditionings but batch-size is %d", batch_size_of(conditioning), batch_size)
        sigmas = self.sigmas(S) if sigmas is None else [float(s) for s in sigmas]
        device = self.model.diffusion.alphas_cumprod.device
        x = torch.randn((batch_size, *shape), device=device) if x_T is None else x_T.to(device)
        denoiser = self.denoiser(conditioning, unconditional_conditioning, unconditional_guidance_scale, quantize_x0,
                                 score_corrector, corrector_kwargs)

        def hook(i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            if callback is not None:
                callback(i)
            if img_callback is not None:
                img_callback(denoised, i)

        return self.run(denoiser, x, sigmas, eta=eta, mask=mask, x0=x0, noise=scaled_noise(temperature, noise_dropout),
                        hook=hook, log_every_t=log_every_t, verbose=verbose)

    @torch.no_grad()
    def img2img(self, x0: torch.Tensor, S: int | None, steps: int, conditioning: Any = None, eta: float = 0.0,
                unconditional_guidance_scale: float = 1.0, unconditional_conditioning: Any = None,
                verbose: bool = True) -> torch.Tensor:
        """SDEdit (Meng et al., ICLR 2022): ``x0`` noised to the level ``steps`` steps before the end of the
        ``S``-step grid, then sampled down from there."""
        check_sampler_options(self.name, eta)
        sigmas = self.sigmas(S)[-(steps + 1):]
        x = (x0 + sigmas[0] * torch.randn_like(x0)) / math.sqrt(1.0 + sigmas[0] ** 2)
        denoiser = self.denoiser(conditioning, unconditional_conditioning, unconditional_guidance_scale)
        return self.run(denoiser, x, sigmas, eta=eta, verbose=verbose)[0]

    def run(self, denoiser: Callable, x: torch.Tensor, sigmas: Sequence[float], eta: float = 0.0,
            mask: torch.Tensor | None = None, x0: torch.Tensor | None = None, noise: Callable = scaled_noise(),
            hook: Callable | None = None, log_every_t: int = 100,
            verbose: bool = True) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Sample from the VP ``x`` at ``sigmas[0]`` down to ``sigmas[-1]``; returns (VP samples, intermediates):
        x and the x0 prediction at every ``log_every_t``-th step from the end, and after the first step.
        ``hook(i, x, denoised)`` sees each step's VP result."""
        if mask is not None and x0 is None:
            raise ValueError("mask given without x0: masked sampling needs the known latent x0")
        step = self.step if mask is None else inpainting(self.step, mask, x0)
        n = len(sigmas) - 1
        intermediates = {"x_inter": [x], "pred_x0": [x]}
        out = [x]

        def on_step(i: int, x_ve: torch.Tensor, denoised: torch.Tensor) -> None:
            out[0] = x_ve / math.sqrt(1.0 + sigmas[i + 1] ** 2)
            if (n - i - 1) % log_every_t == 0 or i == 0:
                intermediates["x_inter"].append(out[0])
                intermediates["pred_x0"].append(denoised)
            if hook is not None:
                hook(i, out[0], denoised)

        sample(step, denoiser, x * math.sqrt(1.0 + sigmas[0] ** 2), sigmas, noise, on_step,
               desc=f"{self.name} sampler" if verbose else None, **self.options(eta, n))
        return out[0], intermediates


class DDPMSampler(Sampler):
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) over all of the model's training steps, with
    classifier-free guidance; the same seed gives the samples of the original ``p_sample_loop``."""

    name = "ddpm"

    def sigmas(self, S: int | None) -> list[float]:
        process = self.model.diffusion
        T = process.num_timesteps
        if S is not None and int(S) != T:
            raise ValueError(f"DDPM ancestral sampling runs all {T} training steps of this model; got S={S} "
                             f"(pass S=None or S={T}, or use a sampler that skips steps: ddim, plms, dpmpp2m)")
        return DiscreteSchedule(process.alphas_cumprod).grid(T, "all", to_zero=True).tolist()

    def denoiser(self, *args: Any, **kwargs: Any) -> Denoiser:
        """The denoiser, with its x0 estimates clamped to [-1, 1] when the process says ``clip_denoised``."""
        denoiser = super().denoiser(*args, **kwargs)
        if self.model.diffusion.clip_denoised:
            quantize = denoiser.denoised_fn or (lambda x: x)
            denoiser.denoised_fn = lambda x: quantize(x.clamp(-1.0, 1.0))
        return denoiser

    def sample(self, S: int | None, *args: Any, eta: float | None = None, **kwargs: Any):
        if eta is not None and eta != 1.0:
            raise ValueError(f"DDPM ancestral sampling has eta=1 by definition; got eta={eta} (use --sampler ddim)")
        process = self.model.diffusion
        if process.cond_ids is not None:
            raise ValueError("DDPMSampler does not support num_timesteps_cond > 1 (shorten_cond_schedule)")
        if process.v_posterior != 0:
            raise ValueError(f"ancestral sampling takes the posterior variance of v_posterior=0; "
                             f"got {process.v_posterior}")
        return super().sample(S, *args, eta=1.0, **kwargs)
