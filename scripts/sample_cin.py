"""Class-conditional ImageNet sampling with classifier-free guidance (Ho & Salimans 2021) from the
cin256-v2 latent diffusion model (Rombach et al., CVPR 2022), as the original's
``scripts/latent_imagenet_diffusion.ipynb``:

    python scripts/sample_cin.py --classes 25 187 448 992 --n_samples_per_class 6 --ddim_steps 20 \
        --ddim_eta 0.0 --scale 3.0

Classes are given as indices, synset ids (n01440764) or ImageNet names ("birdhouse"). The
unconditional input of the guidance is the extra class 1000 (``--uncond_class``). Each sample goes
to ``<outdir>/samples/class<CCCC>_<NNNN>.png``, and a grid with one row per class to
``<outdir>/grid-NNNN.png``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ldm.scripting import class_labels, cli, inputs

DEFAULT_CONFIG = "configs/latent-diffusion/cin256-v2.yaml"
DEFAULT_CKPT = "models/ldm/cin256-v2/model.ckpt"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=str, nargs="+", default=["25", "187", "448", "992"],
                        help="classes to render: indices, synset ids or ImageNet names")
    parser.add_argument("--n_samples_per_class", type=int, default=6, help="samples per class (the batch size)")
    parser.add_argument("--ddim_steps", type=int, default=20, help="number of sampling steps")
    parser.add_argument("--ddim_eta", type=float, default=0.0,
                        help="ddim eta (eta=0.0 corresponds to deterministic sampling)")
    parser.add_argument("--scale", type=float, default=3.0,
                        help="unconditional guidance scale: eps = eps(x, uncond) + scale * (eps(x, class) - eps(x, uncond))")
    parser.add_argument("--uncond_class", type=int, default=None,
                        help="the class index the model learned as unconditional (default: the config's "
                             "ucg_class, else its last class: 1000 for cin256-v2)")
    parser.add_argument("--outdir", type=str, default="outputs/cin-samples", help="dir to write results to")
    cli.add_common_arguments(parser, DEFAULT_CONFIG, DEFAULT_CKPT)
    return parser


def class_conditioning_info(model_config) -> tuple[str, int | None]:
    """(cond_stage_key, number of classes) of a class-conditional config; ValueError for other models."""
    params = model_config.get("params", {})
    cond = params.get("cond_stage_config")
    target = cond.get("target", "") if hasattr(cond, "get") else str(cond)
    if not str(target).endswith("ClassEmbedder"):
        raise ValueError(f"this script needs a class-conditional model (cond_stage_config ClassEmbedder); "
                         f"the config has {target!r}")
    n_classes = cond.get("params", {}).get("n_classes", 1000)
    return params.get("cond_stage_key", "class_label"), int(n_classes)


def main(argv: list[str] | None = None) -> list[Path]:
    """Run the script; returns the paths it wrote."""
    opt = get_parser().parse_args(argv)
    cli.check_positive("--n_samples_per_class", opt.n_samples_per_class)
    cli.check_positive("--ddim_steps", opt.ddim_steps)
    files = cli.model_files(opt)
    config = inputs.load_config(files.configs)
    cond_key, n_classes = class_conditioning_info(config.model)
    classes = [class_labels.resolve_class(c, n_classes) for c in opt.classes]
    if opt.uncond_class is None:
        opt.uncond_class = inputs.null_class(config.model, n_classes)
    if opt.scale != 1.0 and not 0 <= opt.uncond_class < n_classes:
        raise ValueError(f"--uncond_class {opt.uncond_class} is not a class of this model ({n_classes} classes); "
                         f"guidance (--scale {opt.scale}) needs the learned unconditional class, or use --scale 1.0")
    size = int(config.model.params.get("image_size"))
    shape = [inputs.latent_channels(config.model), size, size]
    sampler_name, device = cli.prepare_sampling(opt, config, files.ckpt, opt.ddim_steps, eta=opt.ddim_eta)
    import torch
    from tqdm import tqdm

    from ldm.scripting import generate, loading, outputs

    model, sampler = loading.load_sampling_model(config, files.ckpt, device, sampler_name, compile_unet=opt.compile)
    folder = outputs.SampleFolder(opt.outdir)
    n = opt.n_samples_per_class
    loading.seed_everything(opt.seed)
    all_samples = []
    with loading.sampling_scope(model, opt.precision, device):
        uc = None
        if opt.scale != 1.0:
            uc = model.get_learned_conditioning({cond_key: torch.tensor(n * [opt.uncond_class], device=device)})
        for class_label in tqdm(classes, desc="Classes"):
            c = model.get_learned_conditioning({cond_key: torch.tensor(n * [class_label], device=device)})
            samples = generate.run_sampler(sampler_name, model, opt.ddim_steps, n, shape, conditioning=c,
                                           eta=opt.ddim_eta, sampler=sampler, unconditional_guidance_scale=opt.scale,
                                           unconditional_conditioning=uc)
            x_samples = outputs.decode_to_unit(model, samples)
            folder.save_samples(x_samples, lambda i: f"class{class_label:04}_{i:04}.png")
            all_samples.append(x_samples)
    folder.save_grid(all_samples, nrow=n)
    folder.summary.print()
    return folder.summary.paths


if __name__ == "__main__":
    cli.run_script(main)
