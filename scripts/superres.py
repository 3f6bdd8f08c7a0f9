"""4x super-resolution with the BSR latent diffusion model (Rombach et al., CVPR 2022, sec. 4.4), as the
original's super-resolution notebook:

    python scripts/superres.py --input low_res.png --outdir outputs/superres

The low-resolution image, scaled to [-1, 1], is the concat conditioning of a model whose latent has
the input's size (first-stage factor 4, so the decoded sample is 4x larger). ``--input`` is a PNG/JPEG
file or a folder of them; each result goes to ``<outdir>/<name>.png``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ldm.scripting import cli, inputs

DEFAULT_CONFIG = "models/ldm/bsr_sr/config.yaml"
DEFAULT_CKPT = "models/ldm/bsr_sr/model.ckpt"
#: Upscaling factor of the BSR model.
UPSCALE = 4
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=str, required=True, help="low-resolution image, or a folder of images")
    parser.add_argument("--outdir", type=str, default="outputs/superres-samples", help="dir to write results to")
    parser.add_argument("--ddim_steps", type=int, default=100, help="number of sampling steps")
    parser.add_argument("--ddim_eta", type=float, default=1.0,
                        help="ddim eta (eta=0.0 corresponds to deterministic sampling)")
    cli.add_common_arguments(parser, DEFAULT_CONFIG, DEFAULT_CKPT)
    return parser


def list_inputs(path: str) -> list[Path]:
    """The image files named by ``--input``."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"--input folder {p} holds no {'/'.join(IMAGE_SUFFIXES)} image")
        return files
    if not p.is_file():
        raise FileNotFoundError(f"--input {p} not found")
    return [p]


def load_low_res(path: Path, device: torch.device) -> torch.Tensor:
    """(1, 3, h, w) in [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    x = np.array(Image.open(path).convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(x.transpose(2, 0, 1))[None].to(device) * 2.0 - 1.0


def main(argv: list[str] | None = None) -> list[Path]:
    """Run the script; returns the paths it wrote."""
    opt = get_parser().parse_args(argv)
    cli.check_positive("--ddim_steps", opt.ddim_steps)
    low_res = list_inputs(opt.input)
    files = cli.model_files(opt)
    config = inputs.load_config(files.configs)
    inputs.check_conditioning(config.model, ("LR_image",), "superres.py", ", ".join(map(str, files.configs)))
    f = inputs.first_stage_factor(config.model)
    geometry = {}
    from PIL import Image

    for path in low_res:
        with Image.open(path) as im:
            w, h = im.size
        lh, lw = inputs.latent_size(config.model, UPSCALE * h, UPSCALE * w, flag="4 x height/4 x width")
        if (lh, lw) != (h, w):
            raise ValueError(f"{config.model.get('target')} with first-stage factor {f} makes a {lh}x{lw} latent for "
                             f"a {UPSCALE}x upscale of {path} ({h}x{w}); the low-resolution conditioning must have the "
                             f"latent's size, i.e. a first-stage factor of {UPSCALE}")
        geometry[path] = (lh, lw)
    sampler_name, device = cli.prepare_sampling(opt, config, files.ckpt, opt.ddim_steps, eta=opt.ddim_eta)
    from tqdm import tqdm

    from ldm.scripting import generate, loading, outputs

    model, sampler = loading.load_sampling_model(config, files.ckpt, device, sampler_name, compile_unet=opt.compile)
    os.makedirs(opt.outdir, exist_ok=True)
    summary = outputs.OutputSummary()
    channels = inputs.latent_channels(config.model)
    loading.seed_everything(opt.seed)
    with loading.sampling_scope(model, opt.precision, device):
        for path in tqdm(low_res, desc="Super-resolution"):
            c = model.get_learned_conditioning(load_low_res(path, device))  # (1, 3, h, w)
            samples = generate.run_sampler(sampler_name, model, opt.ddim_steps, 1, [channels, *geometry[path]],
                                           conditioning=c, eta=opt.ddim_eta, sampler=sampler)
            x = outputs.decode_to_unit(model, samples)
            # claimed with O_EXCL: a second run into the same folder adds <stem>-1.png instead of overwriting
            outpath = outputs.claim_unique(os.path.join(opt.outdir, path.stem + ".png"))
            summary.add(outputs.save_image(x[0], outpath))
    summary.print()
    return summary.paths


if __name__ == "__main__":
    cli.run_script(main)
