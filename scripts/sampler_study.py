"""Quality against model evaluations for every sampler of the project, and against the guidance scale,
on the embedded demo model.

    python scripts/sampler_study.py                          # newest `make demo` run; all samplers
    python scripts/sampler_study.py --steps 5 10 20 --samplers ddim dpmpp2m --out outputs/study/study.json
    python scripts/sampler_study.py --samplers ddim --steps 50 --scale 1 2 3 4 6 8 \
        --out outputs/demo/guidance_study.json               # the guidance trade-off

For each registered sampler (ldm/models/diffusion/sampling.py), each step count and each guidance
scale, draws --n_per_class samples of every class with the same seeds and scores them with the shapes
classifier (Frechet distance of its features to real images, and class accuracy). Writes the JSON
after every point (a rerun resumes, and adds only the points it lacks) and PNG plots beside it:
<out>.png against model evaluations (with several step counts), <out>_guidance.png against the
guidance scale (with several scales).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ldm.evaluation.settings import DEMO_GUIDANCE, DEMO_OUTDIR, STUDY_STEPS, default_cache_dir
from ldm.sampler_registry import SAMPLERS
from ldm.scripting.cli import check_positive, run_script


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="demo LDM checkpoint (default: newest under outputs/demo/logs)")
    p.add_argument("--samplers", nargs="+", default=None, help=f"samplers to study (default: all of {', '.join(SAMPLERS)})")
    p.add_argument("--steps", nargs="+", type=int, default=list(STUDY_STEPS), help="step counts")
    p.add_argument("--scale", nargs="+", type=float, default=[DEMO_GUIDANCE],
                   help=f"classifier-free guidance scales (default: {DEMO_GUIDANCE:g}, the demo's)")
    p.add_argument("--n_per_class", type=int, default=32, help="samples per class and point")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (the same for every point)")
    p.add_argument("--cache_dir", default=None, help="where the shapes classifier is cached")
    p.add_argument("--out", default=str(DEMO_OUTDIR / "sampler_study.json"), help="JSON output; the PNG goes beside it")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> dict:
    opt = get_parser().parse_args(argv)
    for s in opt.steps:
        check_positive("--steps", s)
    for scale in opt.scale:
        if scale < 1.0:
            raise ValueError(f"--scale {scale:g}: a classifier-free guidance scale must be at least 1 "
                             f"(1 is the conditional model alone)")
    check_positive("--n_per_class", opt.n_per_class)
    from ldm.evaluation import shapes
    from ldm.evaluation.demo_eval import (decoded_size, find_demo_checkpoint, load_demo_model, real_floor,
                                     reference_images, sample_classes, score_samples)
    from ldm.evaluation.study import plot_guidance, plot_study, run_study, study_points
    from ldm.scripting.inputs import require_file
    from ldm.scripting.loading import choose_device

    ckpt = require_file(opt.ckpt, "checkpoint") if opt.ckpt else find_demo_checkpoint()
    device = choose_device(opt.device)
    classifier, _ = shapes.load_or_train(Path(opt.cache_dir) if opt.cache_dir else default_cache_dir(),
                                         progress=not opt.no_progress)
    model, null_class = load_demo_model(ckpt, device=device)
    points = study_points(opt.samplers, tuple(opt.steps), int(model.num_timesteps), tuple(opt.scale))
    size = decoded_size(model)
    reference = reference_images(opt.n_per_class, size)

    def score(name: str, steps: int, scale: float) -> dict:
        images, labels, nfe = sample_classes(model, null_class, name, steps, opt.n_per_class, scale, 0.0,
                                             opt.seed, progress=not opt.no_progress)
        record = score_samples(classifier, images, labels, reference)
        record.pop("per_class_accuracy")
        for key in ("colour_accuracy", "shape_accuracy", "exact_accuracy"):
            record.pop(key)
        record["model_evaluations"] = nfe
        print(f"{name:>12} {steps:>5} steps  guidance {scale:<5g} {nfe:>5} model evaluations  FD {record['fd']:8.3f}  "
              f"accuracy {record['accuracy']:.3f}", flush=True)
        return record

    settings = {"checkpoint": str(ckpt), "n_per_class": opt.n_per_class, "seed": opt.seed, "eta": 0.0,
                "metric": "Frechet distance of shapes-classifier features; class accuracy"}
    study = run_study(score, points, opt.out, settings)
    study["fd_real_vs_real"] = real_floor(classifier, reference, opt.n_per_class, size)
    wanted = {(p[0], p[1], float(p[2])) for p in points}
    shown = {**study, "results": [r for r in study["results"] if (r["sampler"], r["steps"], r["scale"]) in wanted]}
    fd_label = "Frechet distance (shapes classifier)"
    per_point = f"{opt.n_per_class * 6} samples per point; two real sets: FD {study['fd_real_vs_real']:.2f}"
    written = [opt.out]
    if len({r["steps"] for r in shown["results"]}) > 1:
        scales = ", ".join(f"{s:g}" for s in opt.scale)
        written.append(plot_study(shown, Path(opt.out).with_suffix(".png"), metric="fd", metric_label=fd_label,
                                  title=f"demo LDM, guidance {scales}, {per_point}"))
    if len(opt.scale) > 1:
        written.append(plot_guidance(shown, Path(opt.out).with_name(Path(opt.out).stem + "_guidance.png"),
                                     metric_label=fd_label, floor=study["fd_real_vs_real"],
                                     title=f"demo LDM, classifier-free guidance; {per_point}"))
    print("wrote " + " and ".join(map(str, written)))
    return study


if __name__ == "__main__":
    run_script(main)
