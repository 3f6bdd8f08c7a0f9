"""FID, Inception Score, KID and precision/recall of a set of samples against a reference set; sFID, the
Frechet distance of DINOv2 features and the CLIP score on request.

    python scripts/evaluate.py --samples outputs/samples/ --reference data/reference/ \
        [--inception_weights weights-inception-2015-12-05-6726825d.pth] [--metrics fid,isc,kid,prc] [--out results.json]
    python scripts/evaluate.py --samples samples.npz --reference VIRTUAL_imagenet256_labeled.npz --metrics fid,sfid
    python scripts/evaluate.py --samples samples/ --reference ref/ --metrics fd_dinov2 --dinov2_weights dinov2-large/
    python scripts/evaluate.py --samples samples/ --metrics clip_score --prompts captions.txt

A set is a folder of .png/.jpg images, the .npz that scripts/sample_diffusion.py writes, or one of
ADM's reference batches (.npz with arr_0, and mu/sigma, which FID then uses). The Inception-v3 is
torch-fidelity's port of the TensorFlow graph that FID is defined on; its weights file
(weights-inception-2015-12-05-6726825d.pth) is read from --inception_weights, $LDM_INCEPTION_WEIGHTS
or torch's hub cache, never downloaded. Reference features are cached by content hash (--cache_dir).
Prints a table and writes JSON with the keys fid, isc_mean, isc_std, kid_mean, kid_std, precision,
recall, sfid, fd_dinov2, clip_score, num_samples, num_reference (null for metrics not asked for).

sfid is ADM's sFID: the first 7 channels of Inception's mixed_6/conv, 2023 values per image (ADM's
reference batches carry its mu_s/sigma_s). fd_dinov2 reads a DINOv2 model saved by transformers
(config.json + model.safetensors) from --dinov2_weights, $LDM_DINOV2_WEIGHTS or the Hugging Face cache
(facebook/dinov2-large). clip_score reads a CLIP model and processor from --clip_model (a folder or a
repository id in the Hugging Face cache) and one caption per sample, in order, from --prompts.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ldm.evaluation import settings as S
from ldm.scripting.cli import check_positive, run_script


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", required=True, help="folder of images or .npz (arr_0) of the samples to evaluate")
    p.add_argument("--reference", default=None, help="folder or .npz of the reference set (needed for fid, kid, prc)")
    p.add_argument("--inception_weights", default=None,
                   help="path of weights-inception-2015-12-05-6726825d.pth (default: $LDM_INCEPTION_WEIGHTS, "
                        "then torch's hub cache)")
    p.add_argument("--metrics", default=S.DEFAULT_METRICS,
                   help=f"comma-separated subset of {','.join(S.METRIC_NAMES)} (default: {S.DEFAULT_METRICS})")
    p.add_argument("--dinov2_weights", default=None,
                   help="folder of a DINOv2 model saved by transformers, for fd_dinov2 (default: $LDM_DINOV2_WEIGHTS, "
                        "then the Hugging Face cache's facebook/dinov2-large)")
    p.add_argument("--clip_model", default="openai/clip-vit-large-patch14",
                   help="CLIP for clip_score: a folder saved by transformers (model and processor) or a repository "
                        "id found in the Hugging Face cache")
    p.add_argument("--prompts", default=None, help="clip_score: text file with one caption per sample, in order")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--batch_size", type=int, default=64, help="images per Inception forward pass")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--isc_splits", type=int, default=S.ISC_SPLITS, help="splits of the Inception Score")
    p.add_argument("--kid_subsets", type=int, default=S.KID_SUBSETS, help="random subsets for KID")
    p.add_argument("--kid_subset_size", type=int, default=S.KID_SUBSET_SIZE,
                   help="images per KID subset (lowered to the smaller set's size when needed)")
    p.add_argument("--prc_neighborhood", type=int, default=S.PRC_NEIGHBORHOOD, help="k of precision/recall")
    p.add_argument("--seed", type=int, default=S.RNG_SEED, help="seed of the IS shuffle and the KID subsets")
    p.add_argument("--cache_dir", default=None,
                   help="cache of reference features (default: $LDM_EVAL_CACHE or ~/.cache/ldm/evaluation)")
    p.add_argument("--no_cache", action="store_true", help="do not read or write the reference-feature cache")
    p.add_argument("--allow_size_mismatch", action="store_true",
                   help="compare sets of different image sizes (otherwise an error)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> dict:
    opt = get_parser().parse_args(argv)
    metrics = S.parse_metrics(opt.metrics)
    for name in ("batch_size", "isc_splits", "kid_subsets", "kid_subset_size", "prc_neighborhood"):
        check_positive(f"--{name}", getattr(opt, name))
    from ldm.evaluation.evaluate import TWO_SET_METRICS, Settings, evaluate, format_table, inception_layers, report
    from ldm.evaluation.inception import InceptionFeatures
    from ldm.evaluation.image_sets import check_pair, open_image_set
    from ldm.scripting.loading import choose_device

    two_set = [m for m in metrics if m in TWO_SET_METRICS]
    if two_set and opt.reference is None:
        raise ValueError(f"--metrics {','.join(two_set)} compare two sets: give --reference")
    if opt.prompts is not None and "clip_score" not in metrics:
        raise ValueError("--prompts gives the captions of the CLIP score: add clip_score to --metrics")
    settings = Settings(metrics=metrics, isc_splits=opt.isc_splits, kid_subsets=opt.kid_subsets,
                        kid_subset_size=opt.kid_subset_size, prc_neighborhood=opt.prc_neighborhood, seed=opt.seed)
    device = choose_device(opt.device)
    samples = open_image_set(opt.samples, "--samples")
    reference = open_image_set(opt.reference, "--reference") if opt.reference is not None else None
    if reference is not None:
        check_pair(samples, reference, opt.allow_size_mismatch)
    layers = inception_layers(metrics)
    extractor = InceptionFeatures(opt.inception_weights, device=device, layers=layers) if layers else None
    dinov2 = clip = None
    if "fd_dinov2" in metrics:
        from ldm.evaluation.dinov2 import DinoV2Features

        dinov2 = DinoV2Features(opt.dinov2_weights, device=device)
        settings.dinov2_dim = dinov2.dim
    if "clip_score" in metrics:
        from ldm.evaluation.clip_score import ClipScorer, read_captions

        if opt.prompts is None:
            raise ValueError("--metrics clip_score scores samples against their captions: give --prompts FILE "
                             "(one caption per sample, in the samples' order)")
        settings.captions = read_captions(opt.prompts, len(samples))
        clip = ClipScorer(opt.clip_model, device=device)
    cache_dir = None if opt.no_cache else Path(opt.cache_dir) if opt.cache_dir else S.default_cache_dir()
    result = evaluate(samples, reference, extractor, settings, cache_dir=cache_dir, batch_size=opt.batch_size,
                      progress=not opt.no_progress, dinov2=dinov2, clip=clip)
    print(format_table(result))
    report(result, opt.out)
    return result


if __name__ == "__main__":
    run_script(main)
