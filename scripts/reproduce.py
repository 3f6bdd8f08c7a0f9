"""Reproduce a row of the model-zoo table: sample it with its published settings, evaluate the samples
against a reference, and print the published figures beside the measured ones.

    python scripts/reproduce.py celeba256 --reference celebahq_ref/ --num_samples 50000 --batch_size 50
    python scripts/reproduce.py lsun_churches256 --reference VIRTUAL_lsun_church256.npz --num_samples 1000
    python scripts/reproduce.py --list

Rows, their configs, checkpoints, sampler settings (DDIM steps and eta, guidance) and published
figures come from models/model_zoo.yaml (--registry). Samples go to --outdir
(default outputs/reproduce/<row>/) in batches; an interrupted run, started again with the same
options, keeps the finished batches and samples only the rest. The reference is a folder of images
or an .npz (ADM's reference batches work, with their precomputed mu/sigma used for FID).
Published figures come from 50,000 samples; a smaller --num_samples gives a quick but biased FID.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ldm.evaluation.settings import (DEFAULT_METRICS, METRIC_NAMES, REGISTRY, default_cache_dir,
                                     parse_metrics)
from ldm.scripting.cli import check_positive, run_script


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("row", nargs="?", help="row name of the LDM table (see --list)")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    p.add_argument("--reference", help="folder or .npz of reference images")
    p.add_argument("--num_samples", type=int, default=50000, help="samples to draw (the tables used 50,000)")
    p.add_argument("--batch_size", type=int, default=50, help="samples per batch (and per resumable file)")
    p.add_argument("--seed", type=int, default=0, help="batch b is sampled with seed + b")
    p.add_argument("--outdir", default=None, help="run folder (default: outputs/reproduce/<row>)")
    p.add_argument("--config", default=None, help="override the row's config")
    p.add_argument("--ckpt", default=None, help="override the row's checkpoint")
    p.add_argument("--prompts", default=None, help="text rows: captions to sample from, one per line")
    p.add_argument("--inception_weights", default=None, help="weights-inception-2015-12-05-6726825d.pth")
    p.add_argument("--metrics", default=DEFAULT_METRICS,
                   help=f"comma-separated subset of {','.join(METRIC_NAMES)} (clip_score: text rows only)")
    p.add_argument("--dinov2_weights", default=None, help="DINOv2 folder for fd_dinov2 (see scripts/evaluate.py)")
    p.add_argument("--clip_model", default="openai/clip-vit-large-patch14", help="CLIP for clip_score")
    p.add_argument("--kid_subset_size", type=int, default=1000, help="images per KID subset")
    p.add_argument("--registry", default=str(REGISTRY), help="the model-zoo registry")
    p.add_argument("--cache_dir", default=None, help="reference-feature cache")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> dict | None:
    opt = get_parser().parse_args(argv)
    logging.getLogger("ldm.evaluation.zoo").setLevel(logging.INFO)  # says how many batches a resumed run keeps
    from ldm.evaluation import zoo
    from ldm.evaluation.evaluate import Settings, evaluate, format_table, inception_layers, plan, report
    from ldm.evaluation.inception import InceptionFeatures
    from ldm.evaluation.image_sets import check_pair, open_image_set
    from ldm.scripting.inputs import first_stage_factor, load_config, read_prompts, require_file
    from ldm.scripting.loading import choose_device, load_model

    registry = zoo.load_registry(opt.registry)
    if opt.list:
        for row in registry["ldm"]:
            mark = "" if row.get("reproducible", True) else "  (not reproducible here: " + row["reason"] + ")"
            print(f"{row['name']:<28} {row['dataset']:<20} {row['task']}{mark}")
        return None
    if not opt.row:
        raise ValueError("give a row name (see --list)")
    if not opt.reference:
        raise ValueError("--reference is required: a folder or .npz of reference images")
    check_positive("--num_samples", opt.num_samples)
    check_positive("--batch_size", opt.batch_size)
    row = zoo.find_row(registry, opt.row)
    zoo.check_reproducible(row, opt.prompts)
    prompts = read_prompts(opt.prompts) if opt.prompts else None
    config_path, ckpt = zoo.row_paths(row, opt.config, opt.ckpt)
    config = load_config(config_path)
    require_file(ckpt, "checkpoint")
    reference = open_image_set(opt.reference, "--reference")
    side = int(config.model.params.image_size) * first_stage_factor(config.model)
    if reference.size != (side, side):
        raise ValueError(f"{reference.describe()}: the row's model draws {side}x{side} images; the reference must "
                         f"have that size")
    metrics = parse_metrics(opt.metrics)
    settings = Settings(metrics=metrics, kid_subset_size=opt.kid_subset_size)
    if "clip_score" in metrics:
        if row["kind"] != "text":
            raise ValueError(f"--metrics clip_score scores samples against their captions; row {row['name']} is not "
                             f"text-conditional")
        settings.captions = zoo.sample_captions(prompts, opt.num_samples)
    device = choose_device(opt.device)
    dinov2 = clip = None
    if "fd_dinov2" in metrics:
        from ldm.evaluation.dinov2 import DinoV2Features

        dinov2 = DinoV2Features(opt.dinov2_weights, device=device)
        settings.dinov2_dim = dinov2.dim
    if "clip_score" in metrics:
        from ldm.evaluation.clip_score import ClipScorer

        clip = ClipScorer(opt.clip_model, device=device)
    plan(settings, opt.num_samples, len(reference), reference=reference)  # what is undefined, before hours of sampling
    settings.warnings.clear()  # evaluate() plans again and records them
    layers = inception_layers(metrics)
    extractor = InceptionFeatures(opt.inception_weights, device=device, layers=layers) if layers else None
    outdir = zoo.open_run(opt.outdir or Path("outputs") / "reproduce" / row["name"],
                          zoo.run_settings(row, config_path, ckpt, opt.num_samples, opt.batch_size, opt.seed, prompts))

    model, _ = load_model(config, ckpt, device)
    paths = zoo.sample_row(model, row, outdir, opt.num_samples, opt.batch_size, opt.seed, prompts,
                           progress=not opt.no_progress)
    del model
    samples = open_image_set(zoo.gather_samples(paths, outdir / "samples.npz"), "samples")
    if row["kind"] == "text":  # the caption of every sample, in order, as scripts/evaluate.py --prompts reads them
        zoo.write_captions(zoo.sample_captions(prompts, opt.num_samples), outdir / "samples.prompts.txt")
    check_pair(samples, reference)
    result = evaluate(samples, reference, extractor, settings,
                      cache_dir=default_cache_dir() if opt.cache_dir is None else Path(opt.cache_dir),
                      progress=not opt.no_progress, dinov2=dinov2, clip=clip)
    published = zoo.published_figures(row)
    result.update({"row": row["name"], "published": published})
    print(f"{row['name']}: {row['dataset']}, {row['task']}, {row['model']} "
          f"({result['num_samples']} samples against {result['num_reference']} reference images)")
    print(format_table(result, published))
    report(result, outdir / "results.json")
    return result


if __name__ == "__main__":
    run_script(main)
