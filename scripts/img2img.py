"""Image-to-image translation by SDEdit (Meng et al., ICLR 2022, "SDEdit: Guided Image Synthesis and
Editing with Stochastic Differential Equations") with a latent diffusion model (Rombach et al. 2022):

    python scripts/img2img.py --init_img sketch.png --prompt "a fantasy landscape" --strength 0.75

The input image is encoded by the first stage, noised in one go to the step of the ``--sampler``'s
grid that ``--strength`` selects (0 keeps the image, 1 starts from almost pure noise), and denoised
from there (``Sampler.img2img``; DDIM by default) under the model's conditioning: a ``--prompt`` for text
models, a ``--class_label`` for class-conditional ones, nothing for unconditional ones; guided by
``--scale``. Samples go to ``<outdir>/samples/NNNN.png``, a grid of all to ``<outdir>/grid-NNNN.png``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ldm.scripting import class_labels, cli, inputs

DEFAULT_CONFIG = "configs/latent-diffusion/txt2img-1p4B-eval.yaml"
DEFAULT_CKPT = "models/ldm/text2img-large/model.ckpt"
#: Conditioning kinds, from the config's cond_stage_config.
TEXT, CLASS, UNCONDITIONAL = "text", "class", "unconditional"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init_img", type=str, required=True, help="path to the input image")
    parser.add_argument("--prompt", type=str, default=None, help="the prompt (text-conditional models)")
    parser.add_argument("--class_label", type=str, default=None,
                        help="class index, synset id or ImageNet name (class-conditional models)")
    parser.add_argument("--uncond_class", type=int, default=None,
                        help="the class the model learned as unconditional (default: the config's ucg_class, "
                             "else its last class)")
    parser.add_argument("--outdir", type=str, default="outputs/img2img-samples", help="dir to write results to")
    parser.add_argument("--strength", type=float, default=0.75,
                        help="how much of the image to destroy: 0 keeps it, 1 starts from (almost) pure noise")
    parser.add_argument("--ddim_steps", type=int, default=50,
                        help="number of sampler steps for strength 1 (ddpm takes every training step)")
    parser.add_argument("--ddim_eta", type=float, default=0.0,
                        help="ddim eta (eta=0.0 corresponds to deterministic sampling)")
    parser.add_argument("--n_iter", type=int, default=1, help="sample this often")
    parser.add_argument("--n_samples", type=int, default=2, help="how many samples per round (the batch size)")
    parser.add_argument("--scale", type=float, default=5.0,
                        help="unconditional guidance scale (ignored by unconditional models)")
    cli.add_common_arguments(parser, DEFAULT_CONFIG, DEFAULT_CKPT)
    return parser


def conditioning_kind(model_config) -> tuple[str, int | None]:
    """(kind, number of classes) from the config's cond_stage_config."""
    params = model_config.get("params", {})
    cond = params.get("cond_stage_config")
    if cond is None or cond == inputs.UNCONDITIONAL:
        return UNCONDITIONAL, None
    if isinstance(cond, str):
        raise ValueError(f"img2img supports text-, class-conditional and unconditional models; cond_stage_config "
                         f"is {cond!r}")
    target = str(cond.get("target", ""))
    if target.endswith("ClassEmbedder"):
        return CLASS, int(cond.get("params", {}).get("n_classes", 1000))
    return TEXT, None


def load_image(path: str, multiple: int) -> Any:
    """The image at ``path`` as RGB; ValueError when its height or width is not a multiple of ``multiple``."""
    from PIL import Image

    image = Image.open(inputs.require_file(path, "--init_img", hint="Give the path of an existing image file "
                                                                     "(PNG, JPEG, ...).")).convert("RGB")
    w, h = image.size
    if w % multiple or h % multiple:
        raise ValueError(f"--init_img {path} is {w}x{h}; width and height must be multiples of {multiple} "
                         f"for this model (resize or crop it to {w - w % multiple}x{h - h % multiple})")
    return image


def to_tensor(image: Any) -> torch.Tensor:
    """A PIL image as (1, 3, H, W) in [-1, 1]."""
    import numpy as np
    import torch

    x = np.array(image).astype(np.float32) / 255.0
    return torch.from_numpy(x.transpose(2, 0, 1))[None] * 2.0 - 1.0


def main(argv: list[str] | None = None) -> list[Path]:
    """Run the script; returns the paths it wrote."""
    opt = get_parser().parse_args(argv)
    for name in ("n_iter", "n_samples", "ddim_steps"):
        cli.check_positive(f"--{name}", getattr(opt, name))
    if not 0.0 < opt.strength <= 1.0:
        raise ValueError(f"--strength must be in (0, 1]; got {opt.strength}")
    t_enc = int(opt.strength * opt.ddim_steps)
    if t_enc < 1:
        raise ValueError(f"--strength {opt.strength} x --ddim_steps {opt.ddim_steps} gives no DDIM step; "
                         f"raise either")
    files = cli.model_files(opt)
    config = inputs.load_config(files.configs)
    kind, n_classes = conditioning_kind(config.model)
    class_label = None
    if kind == TEXT and opt.prompt is None:
        raise ValueError("this is a text-conditional model: give a --prompt")
    if kind == CLASS:
        if opt.class_label is None:
            raise ValueError("this is a class-conditional model: give a --class_label")
        class_label = class_labels.resolve_class(opt.class_label, n_classes)
    if kind != TEXT and opt.prompt is not None:
        raise ValueError(f"--prompt was given, but the model is {kind}")
    if kind != CLASS and opt.class_label is not None:
        raise ValueError(f"--class_label was given, but the model is {kind}")
    uncond_class = opt.uncond_class
    if kind == CLASS and uncond_class is None:
        uncond_class = inputs.null_class(config.model, n_classes)
    init_image = load_image(opt.init_img, inputs.first_stage_factor(config.model)
                            * inputs.unet_factor(config.model))
    sampler_name, device = cli.prepare_sampling(opt, config, files.ckpt, opt.ddim_steps, eta=opt.ddim_eta)
    import torch
    from tqdm import trange

    from ldm.sampler_registry import sampler_spec
    from ldm.scripting import loading, outputs

    model, sampler = loading.load_sampling_model(config, files.ckpt, device, sampler_name, compile_unet=opt.compile)
    # a sampler with fixed steps (ddpm): strength applies to every training step
    steps = None if sampler_spec(sampler_name).fixed_steps else opt.ddim_steps
    if steps is None:
        t_enc = max(1, int(opt.strength * model.num_timesteps))
    folder = outputs.SampleFolder(opt.outdir)
    n = opt.n_samples
    loading.seed_everything(opt.seed)
    all_samples = []
    with loading.sampling_scope(model, opt.precision, device):
        init_latent = model.get_first_stage_encoding(model.encode_first_stage(to_tensor(init_image).to(device)))
        init_latent = init_latent.repeat(n, 1, 1, 1)  # (n, C, h, w)
        c, uc = None, None
        if kind == TEXT:
            c = model.get_learned_conditioning(n * [opt.prompt])
            uc = model.get_learned_conditioning(n * [""]) if opt.scale != 1.0 else None
        elif kind == CLASS:
            key = model.cond_stage_key
            c = model.get_learned_conditioning({key: torch.tensor(n * [class_label], device=device)})
            if opt.scale != 1.0:
                uc = model.get_learned_conditioning({key: torch.tensor(n * [uncond_class], device=device)})
        scale = opt.scale if uc is not None else 1.0
        for _ in trange(opt.n_iter, desc="Sampling"):
            samples = sampler.img2img(init_latent, steps, t_enc, c, eta=opt.ddim_eta, unconditional_guidance_scale=scale,
                                      unconditional_conditioning=uc, verbose=False)
            x_samples = outputs.decode_to_unit(model, samples)
            folder.save_samples(x_samples)
            all_samples.append(x_samples)
    folder.save_grid(all_samples, nrow=n)
    folder.summary.print()
    return folder.summary.paths


if __name__ == "__main__":
    cli.run_script(main)
