"""Inpainting with the latent diffusion inpainting model (Rombach et al., CVPR 2022, sec. 4.5), as the
original ``scripts/inpaint.py``:

    python scripts/inpaint.py --indir data/inpainting_examples/ --outdir outputs/inpainting_results

``indir`` holds images ``<name>.png`` and masks ``<name>_mask.png`` (white = fill in). The model is
conditioned by concatenation on the first-stage encoding of the masked image and the mask resized
to the latent size; the result keeps the known pixels: ``(1 - mask) * image + mask * prediction``,
written to ``<outdir>/<name>.png``.
"""
from __future__ import annotations

import argparse
import glob
import os
from pathlib import Path

from ldm.scripting import cli, inputs

DEFAULT_CONFIG = "models/ldm/inpainting_big/config.yaml"
DEFAULT_CKPT = "models/ldm/inpainting_big/last.ckpt"
MASK_SUFFIX = "_mask.png"
#: The cond stage of an inpainting model: the first stage's encoding of the masked image.
FIRST_STAGE = "__is_first_stage__"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--indir", type=str, nargs="?", required=True,
                        help="dir containing image-mask pairs (`example.png` and `example_mask.png`)")
    parser.add_argument("--outdir", type=str, nargs="?", required=True, help="dir to write results to")
    parser.add_argument("--steps", type=int, default=50, help="number of sampling steps")
    cli.add_common_arguments(parser, DEFAULT_CONFIG, DEFAULT_CKPT)
    return parser


def find_pairs(indir: str) -> list[tuple[str, str]]:
    """(image, mask) paths of ``indir``, sorted; ValueError when a mask has no image or none is found."""
    if not os.path.isdir(indir):
        raise FileNotFoundError(f"--indir {indir} is not a directory")
    masks = sorted(glob.glob(os.path.join(indir, f"*{MASK_SUFFIX}")))
    if not masks:
        raise ValueError(f"no masks '*{MASK_SUFFIX}' in {indir}; expected <name>.png with <name>{MASK_SUFFIX}")
    pairs = []
    for mask in masks:
        image = mask[: -len(MASK_SUFFIX)] + ".png"
        if not os.path.isfile(image):
            raise FileNotFoundError(f"mask {mask} has no image {image}")
        pairs.append((image, mask))
    return pairs


def check_sizes(pairs: list[tuple[str, str]], multiple: int) -> None:
    """Each mask must match its image's size, and the size must suit the model (a multiple of ``multiple``)."""
    from PIL import Image

    for image, mask in pairs:
        with Image.open(image) as im, Image.open(mask) as m:
            if im.size != m.size:
                raise ValueError(f"mask {mask} is {m.size[0]}x{m.size[1]} but image {image} is "
                                 f"{im.size[0]}x{im.size[1]}; they must have the same size")
            if im.size[0] % multiple or im.size[1] % multiple:
                raise ValueError(f"image {image} is {im.size[0]}x{im.size[1]}; width and height must be "
                                 f"multiples of {multiple} for this model")


def make_batch(image: str, mask: str, device: torch.device) -> dict[str, torch.Tensor]:
    """image, mask (binarized at 0.5) and masked image, all (1, C, H, W) in [-1, 1], as the original."""
    import numpy as np
    import torch
    from PIL import Image

    img = np.array(Image.open(image).convert("RGB")).astype(np.float32) / 255.0
    img = torch.from_numpy(img[None].transpose(0, 3, 1, 2))  # (1, 3, H, W)
    m = np.array(Image.open(mask).convert("L")).astype(np.float32) / 255.0
    m = m[None, None]
    m[m < 0.5] = 0
    m[m >= 0.5] = 1
    m = torch.from_numpy(m)  # (1, 1, H, W)
    masked_image = (1 - m) * img
    batch = {"image": img, "mask": m, "masked_image": masked_image}
    return {k: v.to(device=device) * 2.0 - 1.0 for k, v in batch.items()}


def inpaint_batch(model: torch.nn.Module, sampler_name: str, sampler, batch: dict[str, torch.Tensor],
                  steps: int) -> torch.Tensor:
    """The composited result (1, 3, H, W) in [0, 1] for one prepared batch (call it under ``torch.no_grad``)."""
    import torch

    from ldm.scripting import generate, outputs

    c = model.cond_stage_model.encode(batch["masked_image"])  # (1, C, h, w): the first-stage encoding
    cc = torch.nn.functional.interpolate(batch["mask"], size=c.shape[-2:])  # (1, 1, h, w)
    c = torch.cat((c, cc), dim=1)
    shape = (c.shape[1] - 1,) + tuple(c.shape[2:])
    samples = generate.run_sampler(sampler_name, model, steps, c.shape[0], shape, conditioning=c, sampler=sampler)
    predicted = outputs.decode_to_unit(model, samples)
    image = torch.clamp((batch["image"] + 1.0) / 2.0, min=0.0, max=1.0)
    mask = torch.clamp((batch["mask"] + 1.0) / 2.0, min=0.0, max=1.0)
    return (1 - mask) * image + mask * predicted


def main(argv: list[str] | None = None) -> list[Path]:
    """Run the script; returns the paths it wrote."""
    opt = get_parser().parse_args(argv)
    cli.check_positive("--steps", opt.steps)
    pairs = find_pairs(opt.indir)
    files = cli.model_files(opt)
    config = inputs.load_config(files.configs)
    cond_stage = config.model.get("params", {}).get("cond_stage_config")
    if cond_stage != FIRST_STAGE:
        raise ValueError(f"{', '.join(map(str, files.configs))}: inpainting needs a model conditioned on the first "
                         f"stage's encoding of the masked image (cond_stage_config: {FIRST_STAGE}), as "
                         f"models/ldm/inpainting_big; this one has cond_stage_config "
                         f"{cond_stage if isinstance(cond_stage, str) else cond_stage.get('target')!r}")
    check_sizes(pairs, inputs.first_stage_factor(config.model) * inputs.unet_factor(config.model))
    print(f"Found {len(pairs)} inputs.")
    sampler_name, device = cli.prepare_sampling(opt, config, files.ckpt, opt.steps, "--steps")
    from tqdm import tqdm

    from ldm.scripting import loading, outputs

    model, sampler = loading.load_sampling_model(config, files.ckpt, device, sampler_name, compile_unet=opt.compile)
    os.makedirs(opt.outdir, exist_ok=True)
    summary = outputs.OutputSummary()
    loading.seed_everything(opt.seed)
    with loading.sampling_scope(model, opt.precision, device):
        for image, mask in tqdm(pairs, desc="Inpainting"):
            batch = make_batch(image, mask, device=device)
            inpainted = inpaint_batch(model, sampler_name, sampler, batch, opt.steps)
            # claimed with O_EXCL: a second run into the same folder adds <name>-1.png instead of overwriting
            outpath = outputs.claim_unique(os.path.join(opt.outdir, os.path.split(image)[1]))
            summary.add(outputs.save_image(inpainted[0], outpath))
    summary.print()
    return summary.paths


if __name__ == "__main__":
    cli.run_script(main)
