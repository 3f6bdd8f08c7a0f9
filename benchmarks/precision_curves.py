"""Training loss under float32 and bf16 mixed precision, side by side, for the demo configs.

    python benchmarks/precision_curves.py                       # both demo stages, 300 steps each
    python benchmarks/precision_curves.py --steps 500 --configs ldm_shapes_cond

Each config is trained with ``main.py --precision 32-true`` and ``--precision bf16-mixed`` from the same
seed, and the logged training loss (``train/loss_simple_step`` for the LDM, ``train/rec_loss`` for
the autoencoder) is printed as means over windows of ``--window`` steps. The two columns come from
different rounding, so they agree within the step-to-step noise of the loss, not exactly.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"ldm_shapes_cond": "train/loss_simple_step", "autoencoder_kl_shapes": "train/rec_loss"}
PRECISIONS = ("32-true", "bf16-mixed")


def train(config: str, precision: str, steps: int, logdir: Path, threads: int, seed: int) -> Path:
    name = f"{config}_{precision}"
    cmd = [sys.executable, str(REPO / "main.py"), "--base", str(REPO / "configs" / "demo" / f"{config}.yaml"), "-t",
           "--accelerator", "cpu", "--precision", precision, "--max_steps", str(steps), "--threads", str(threads),
           "--seed", str(seed), "-l", str(logdir), "-n", name]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return next(p for p in sorted(logdir.iterdir()) if p.name.endswith(name))


def scalars(run: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        raise SystemExit(f"error: {run} logged no {tag}; it has {acc.Tags()['scalars']}")
    return {event.step: event.value for event in acc.Scalars(tag)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"demo configs ({', '.join(CONFIGS)})")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    parser.add_argument("--window", type=int, default=50, help="steps per averaged window (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--logdir", help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="ldm-precision-"))
    for config in args.configs.split(","):
        if config not in CONFIGS:
            raise SystemExit(f"error: --configs {config!r} must be among {', '.join(CONFIGS)}")
        curves = {p: scalars(train(config, p, args.steps, logdir, args.threads, args.seed), CONFIGS[config])
                  for p in PRECISIONS}
        print(f"\n{config} ({CONFIGS[config]}, mean per {args.window} steps)\n")
        print("| steps | " + " | ".join(PRECISIONS) + " |\n|---|---|---|")
        for start in range(0, args.steps, args.window):
            means = []
            for p in PRECISIONS:
                values = [v for s, v in curves[p].items() if start <= s < start + args.window]
                means.append(f"{sum(values) / len(values):.4f}" if values else "-")
            print(f"| {start}-{start + args.window - 1} | " + " | ".join(means) + " |")
    print(f"\nruns in {logdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
