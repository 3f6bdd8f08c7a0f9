"""Text-to-image sampling with a text-conditional latent diffusion model (Rombach et al., CVPR 2022),
with classifier-free guidance (Ho & Salimans 2021), as the original ``scripts/txt2img.py``:

    python scripts/txt2img.py --prompt "a virus monster is playing guitar, oil on canvas" \
        --ddim_eta 0.0 --n_samples 4 --n_iter 4 --scale 5.0 --ddim_steps 50

Each sample goes to ``<outdir>/samples/NNNN.png`` (numbering continues after the files already
there) and an ``n_iter`` x ``n_samples`` grid to ``<outdir>/<prompt, spaces as '-'>.png``. With
``--from-file`` every line of the file is a prompt, sampled the same way, with one grid per prompt.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ldm.scripting import cli, inputs

DEFAULT_CONFIG = "configs/latent-diffusion/txt2img-1p4B-eval.yaml"
DEFAULT_CKPT = "models/ldm/text2img-large/model.ckpt"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=str, nargs="?", default="a painting of a virus monster playing guitar",
                        help="the prompt to render")
    parser.add_argument("--from-file", type=str, default=None, help="read the prompts from this file, one per line")
    parser.add_argument("--outdir", type=str, nargs="?", default="outputs/txt2img-samples",
                        help="dir to write results to")
    parser.add_argument("--ddim_steps", type=int, default=200, help="number of sampling steps")
    parser.add_argument("--plms", action="store_true", help="use plms sampling (same as --sampler plms)")
    parser.add_argument("--ddim_eta", type=float, default=0.0,
                        help="ddim eta (eta=0.0 corresponds to deterministic sampling)")
    parser.add_argument("--n_iter", type=int, default=1, help="sample this often")
    parser.add_argument("--H", type=int, default=256, help="image height, in pixel space")
    parser.add_argument("--W", type=int, default=256, help="image width, in pixel space")
    parser.add_argument("--n_samples", type=int, default=4,
                        help="how many samples to produce for the given prompt (the batch size)")
    parser.add_argument("--scale", type=float, default=5.0,
                        help="unconditional guidance scale: eps = eps(x, empty) + scale * (eps(x, cond) - eps(x, empty))")
    cli.add_common_arguments(parser, DEFAULT_CONFIG, DEFAULT_CKPT)
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    """Run the script; returns the paths it wrote."""
    opt = get_parser().parse_args(argv)
    # everything that can be wrong with the arguments is found before the model is built
    for name in ("n_iter", "n_samples", "ddim_steps"):
        cli.check_positive(f"--{name}", getattr(opt, name))
    prompts = inputs.read_prompts(opt.from_file) if opt.from_file else [opt.prompt]
    if any(p is None for p in prompts):
        raise ValueError("give a --prompt or a --from-file")
    files = cli.model_files(opt)
    config = inputs.load_config(files.configs)
    inputs.check_conditioning(config.model, ("caption",), "txt2img.py", ", ".join(map(str, files.configs)))
    h, w = inputs.latent_size(config.model, opt.H, opt.W)
    shape = [inputs.latent_channels(config.model), h, w]
    sampler_name, device = cli.prepare_sampling(opt, config, files.ckpt, opt.ddim_steps, eta=opt.ddim_eta)
    from tqdm import tqdm

    from ldm.scripting import generate, loading, outputs

    model, sampler = loading.load_sampling_model(config, files.ckpt, device, sampler_name, compile_unet=opt.compile)
    folder = outputs.SampleFolder(opt.outdir)
    loading.seed_everything(opt.seed)

    with loading.sampling_scope(model, opt.precision, device):
        uc = None
        if opt.scale != 1.0:
            uc = model.get_learned_conditioning(opt.n_samples * [""])
        for prompt in prompts:
            all_samples = []
            for _ in tqdm(range(opt.n_iter), desc=f"Sampling {prompt[:40]!r}"):
                c = model.get_learned_conditioning(opt.n_samples * [prompt])
                samples = generate.run_sampler(sampler_name, model, opt.ddim_steps, opt.n_samples, shape,
                                               conditioning=c, eta=opt.ddim_eta, sampler=sampler,
                                               unconditional_guidance_scale=opt.scale,
                                               unconditional_conditioning=uc)
                x_samples = outputs.decode_to_unit(model, samples)
                folder.save_samples(x_samples)
                all_samples.append(x_samples)
            grid_path = outputs.claim_unique(os.path.join(opt.outdir, outputs.prompt_filename(prompt)))
            folder.summary.add(outputs.save_grid(all_samples, grid_path, nrow=opt.n_samples))

    folder.summary.print()
    print(f"Your samples are ready and waiting for you here: \n{opt.outdir} \nEnjoy.")
    return folder.summary.paths


if __name__ == "__main__":
    cli.run_script(main)
