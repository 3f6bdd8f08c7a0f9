"""Evaluate the embedded demo model with no download: class accuracy and a Frechet distance of its
class-conditional samples, both measured by a small classifier trained on the embedded shapes.

    python scripts/evaluate_demo.py                       # the newest run of `make demo`
    python scripts/evaluate_demo.py --ckpt outputs/demo/logs/<run>_demo_ldm/checkpoints/last.ckpt \
        --sampler dpmpp2m --steps 20 --out demo_eval.json

The classifier (ldm/evaluation/shapes.py) learns colour and shape of all 36 colour x shape pairs,
so a sample shows its class only when both are right; it trains once (under a minute on a CPU) and
is cached in --cache_dir. Prints the figures and writes them as JSON, with the samples beside it
(<out>.samples.npz: arr_0 the images, arr_1 their class labels).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ldm.evaluation.settings import DEMO_GUIDANCE, DEMO_OUTDIR, default_cache_dir
from ldm.sampler_registry import SAMPLERS, check_run_options
from ldm.scripting.cli import check_positive, run_script


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="demo LDM checkpoint (default: newest under outputs/demo/logs)")
    p.add_argument("--sampler", default="ddim", help=f"sampler: {', '.join(SAMPLERS)}")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (ddpm always runs all training steps)")
    p.add_argument("--scale", type=float, default=DEMO_GUIDANCE,
                   help=f"classifier-free guidance scale (default: {DEMO_GUIDANCE:g}, that of the demo's samples)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument("--n_per_class", type=int, default=64, help="samples per class")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--cache_dir", default=None, help="where the classifier is cached "
                                                     "(default: $LDM_EVAL_CACHE or ~/.cache/ldm/evaluation)")
    p.add_argument("--out", default=str(DEMO_OUTDIR / "evaluation.json"), help="JSON output")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> dict:
    opt = get_parser().parse_args(argv)
    check_positive("--steps", opt.steps)
    check_positive("--n_per_class", opt.n_per_class)
    name = check_run_options(opt.sampler, opt.eta)
    from ldm.evaluation.demo_eval import evaluate_demo, find_demo_checkpoint
    from ldm.evaluation.evaluate import write_json
    from ldm.scripting.inputs import require_file
    from ldm.scripting.loading import choose_device

    ckpt = require_file(opt.ckpt, "checkpoint") if opt.ckpt else find_demo_checkpoint()
    device = choose_device(opt.device)
    cache_dir = Path(opt.cache_dir) if opt.cache_dir else default_cache_dir()
    r = evaluate_demo(ckpt, cache_dir, name, opt.steps, opt.n_per_class, opt.scale, opt.eta, opt.seed, device,
                      progress=not opt.no_progress, samples_out=Path(opt.out).with_suffix(".samples.npz"))
    print(f"demo model {ckpt}")
    print(f"  sampler {r['sampler']}, {r['steps']} steps, eta {r['eta']}, guidance {r['scale']}: "
          f"{r['model_evaluations']} model evaluations per sample")
    print(f"  class accuracy      {r['accuracy']:.4f}  ({r['num_samples']} samples; per class: "
          + ", ".join(f"{k} {v:.2f}" for k, v in r["per_class_accuracy"].items()) + ")")
    print(f"  colour right {r['colour_accuracy']:.4f}, shape right {r['shape_accuracy']:.4f}, "
          f"both {r['exact_accuracy']:.4f} (each out of all 6 colours and 6 shapes)")
    print(f"  Frechet distance    {r['fd']:.4f}  (two real sets of this size: {r['fd_real_vs_real']:.4f})")
    print(f"  classifier accuracy {r['classifier_validation_accuracy']:.4f} on real validation images; "
          f"{r['seconds']} s in all")
    print(f"wrote {write_json(r, opt.out)}")
    return r


if __name__ == "__main__":
    run_script(main)
