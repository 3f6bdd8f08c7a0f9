"""How close 20-step samplers come to the exact probability-flow ODE solution, on a small trained model.

DPM-Solver++(2M) (Lu et al. 2022) against DDIM (Song et al. 2021) at 20 steps, both measured as the
RMS distance to a reference computed from the same x_T with DDIM over every one of the model's 1000
training steps (the first-order solver converged to its limit; it equals the project's DDIMSampler
step for step, as tests/test_dpm_solver.py checks, and the project's DDIMSampler at 500 steps is
printed as a cross-check). The model is a pixel-space diffusion model (a LatentDiffusion with an
identity first stage, the noise schedule of the txt2img-1p4B model) trained for a few hundred steps
on the embedded synthetic shapes at 16x16, or loaded from ``--model`` when that file exists. Its
samples are rough; what is measured is how far each solver lands from the exact ODE solution of
this model.

    python benchmarks/sampler_accuracy.py            # trains (about a minute), then compares
    python benchmarks/sampler_accuracy.py --train_steps 0 --model bench_out/sampler_accuracy/model.pt

DDIMSampler's own 20-step grid starts at training step 951 (the original's "+1" uniform grid), so
DDIM is reported twice: on that grid (against a reference that also starts at 951) and on the same
grid as DPM-Solver++ (999 -> 0). The script exits with status 1 unless DPM-Solver++ is closer than
both.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from ldm.data.synthetic import SyntheticShapesTrain  # noqa: E402
from ldm.models.diffusion.ddim import DDIMSampler  # noqa: E402
from ldm.models.diffusion.dpm_solver import SKIP_TYPES, DPMSolverSampler  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402

SIZE = 16
MODEL_CONFIG = {
    "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
    "params": {
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "first_stage_key": "image",
        "image_size": SIZE, "channels": 3, "use_ema": False, "scale_factor": 1.0,
        "cond_stage_config": "__is_unconditional__",
        "first_stage_config": {"target": "ldm.models.autoencoder.IdentityFirstStage"},
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
            "image_size": SIZE, "in_channels": 3, "out_channels": 3, "model_channels": 32,
            "attention_resolutions": [4], "num_res_blocks": 1, "channel_mult": [1, 2, 2], "num_head_channels": 32}},
    },
}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=str, default="bench_out/sampler_accuracy/model.pt",
                        help="state dict of the trained model: loaded when it exists, else written after training")
    parser.add_argument("--train_steps", type=int, default=500, help="optimizer steps when training")
    parser.add_argument("--batch_size", type=int, default=32, help="training batch size")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate (one-cycle schedule)")
    parser.add_argument("--steps", type=int, default=20, help="steps of the compared samplers")
    parser.add_argument("--n", type=int, default=8, help="number of samples compared")
    parser.add_argument("--seed", type=int, default=0, help="seed of training and of x_T")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", type=str, default=None, help="cuda when available, else cpu")
    return parser


def train(model: torch.nn.Module, steps: int, batch_size: int, lr: float, seed: int, device: torch.device) -> None:
    """``steps`` Adam steps (one-cycle learning rate) of the eps-prediction loss on the synthetic shapes."""
    data = SyntheticShapesTrain(size=SIZE, num_samples=steps * batch_size, seed=seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    optimizer = torch.optim.Adam(model.model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    start = time.time()
    for i, batch in enumerate(loader):
        x = batch["image"].permute(0, 3, 1, 2).to(device)  # (B, 3, H, W) in [-1, 1]
        loss, _ = model(x, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if i % 100 == 0 or i == steps - 1:
            print(f"  step {i:4d}  loss {loss.item():.4f}  ({time.time() - start:.0f}s)")
    model.eval()


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    opt = get_parser().parse_args(argv)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    device = torch.device(opt.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(opt.seed)
    model = instantiate_from_config(OmegaConf.create(MODEL_CONFIG)).to(device)
    path = Path(opt.model)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        model.eval()
        print(f"loaded {path}")
    else:
        print(f"training {opt.train_steps} steps on the synthetic shapes ({SIZE}x{SIZE})")
        with torch.enable_grad():
            train(model, opt.train_steps, opt.batch_size, opt.lr, opt.seed, device)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        print(f"saved {path}")

    T = model.num_timesteps
    shape = (3, SIZE, SIZE)
    x_T = torch.randn((opt.n, *shape), generator=torch.Generator().manual_seed(opt.seed + 1)).to(device)
    first_order = DPMSolverSampler(model, order=1)
    ddim = DDIMSampler(model)

    def timed(fn):
        start = time.time()
        out = fn()
        return out, time.time() - start

    def reference_from(start_step: int) -> torch.Tensor:
        return first_order.sample(None, opt.n, shape, x_T=x_T, verbose=False,
                                  timesteps=list(range(start_step, -1, -1)))[0]

    ref, t_ref = timed(lambda: reference_from(T - 1))
    ddim20, t_ddim = timed(lambda: ddim.sample(opt.steps, opt.n, shape, x_T=x_T, eta=0.0, verbose=False)[0])
    ddim_start = int(ddim.ddim_timesteps[-1])
    ref_ddim_grid = reference_from(ddim_start)
    ddim_half = ddim.sample(T // 2, opt.n, shape, x_T=x_T, eta=0.0, verbose=False)[0]
    dpm = DPMSolverSampler(model)
    dpm20, t_dpm = timed(lambda: dpm.sample(opt.steps, opt.n, shape, x_T=x_T, verbose=False)[0])
    ddim20_same_grid = first_order.sample(None, opt.n, shape, x_T=x_T, verbose=False,
                                          timesteps=dpm.make_timesteps(opt.steps))[0]
    other_grids = {skip: DPMSolverSampler(model, skip_type=skip).sample(opt.steps, opt.n, shape, x_T=x_T,
                                                                          verbose=False)[0]
                   for skip in SKIP_TYPES if skip != dpm.skip_type}

    scale = ref.pow(2).mean().sqrt().item()
    rows = [
        (f"DDIMSampler, {T // 2} steps (cross-check of the reference)", rms(ddim_half, ref), None),
        (f"DDIMSampler, {opt.steps} steps ({ddim_start} -> 0, the original grid)", rms(ddim20, ref_ddim_grid), t_ddim),
        (f"DDIM, {opt.steps} steps (DPM-Solver++'s {dpm.skip_type} grid, {T - 1} -> 0)", rms(ddim20_same_grid, ref),
         None),
        (f"DPM-Solver++(2M), {opt.steps} steps ({T - 1} -> 0, {dpm.skip_type} grid)", rms(dpm20, ref), t_dpm),
    ]
    rows += [(f"  for comparison: DPM-Solver++(2M) on the {skip} grid", rms(x, ref), None)
             for skip, x in other_grids.items()]
    print(f"\nreference: DDIM over every training step, {T - 1} -> 0 ({T - 1} steps, {t_ref:.1f}s); "
          f"RMS of the reference samples {scale:.3f}; {opt.n} samples, same x_T for all")
    print(f"{'sampler':64s} {'RMS distance':>12s} {'time':>7s}")
    for name, dist, seconds in rows:
        print(f"{name:64s} {dist:12.5f} {'' if seconds is None else f'{seconds:6.2f}s':>7s}")
    ddim_best = min(rows[1][1], rows[2][1])
    ok = rows[3][1] < ddim_best
    print(f"\nDPM-Solver++ is {ddim_best / max(rows[3][1], 1e-12):.1f}x closer to the reference than the closer DDIM: "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
