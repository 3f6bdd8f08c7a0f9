"""Unconditional sampling from a (latent) diffusion model (Rombach et al., CVPR 2022), as the original
``scripts/sample_diffusion.py``:

    python scripts/sample_diffusion.py -r models/ldm/<model_spec>/model.ckpt -l <logdir> -n <#samples> \
        --batch_size <batch_size> -c <#ddim steps> -e <#eta>

``-r`` names a ``main.py`` run folder (``logs/<run>/``: its ``checkpoints/last.ckpt`` and
``configs/``), a checkpoint inside one, a model folder holding ``model.ckpt`` and ``config.yaml``,
or a checkpoint with ``config.yaml`` beside it; extra ``key=value`` arguments override the config.
Only unconditional models can be sampled here; a conditional one is refused from its config, before
any weights are read. Writes, under ``<logdir>/samples/<global_step, 8 digits>/<date-time>/``:
``img/sample_NNNNNN.png`` for each sample, ``numpy/<N>x<H>x<W>x<C>-samples.npz`` with all of them as
uint8 (key ``arr_0``), and ``sampling_config.yaml`` with the options of the run. ``<logdir>`` is the
run folder (or the model folder), or ``<-l>/<that folder's name>`` when ``-l`` is given. DDIM sampling
by default; ``--vanilla_sample`` runs ancestral DDPM sampling over all training steps.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import logging
import os
import time
from pathlib import Path
from typing import Any

from ldm.scripting import cli, inputs

logger = logging.getLogger("sample_diffusion")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-r", "--resume", type=str, nargs="?", required=True,
                        help="a main.py run folder, a checkpoint inside one, or a model folder "
                             "(model.ckpt and config.yaml)")
    parser.add_argument("-n", "--n_samples", type=int, nargs="?", default=50000, help="number of samples to draw")
    parser.add_argument("-e", "--eta", type=float, nargs="?", default=1.0,
                        help="eta for ddim sampling (0.0 yields deterministic sampling)")
    parser.add_argument("-v", "--vanilla_sample", default=False, action="store_true",
                        help="vanilla sampling (default option is DDIM sampling)?")
    parser.add_argument("-l", "--logdir", type=str, nargs="?", default="none",
                        help="write under <logdir>/<run or model folder name>/samples/ (default: into the run or "
                             "model folder itself)")
    parser.add_argument("-c", "--custom_steps", type=int, nargs="?", default=50,
                        help="number of steps for ddim and fastdpm sampling")
    parser.add_argument("--batch_size", type=int, nargs="?", default=10, help="the bs")
    cli.add_common_arguments(parser, config=None, ckpt=None)
    return parser


def custom_to_np(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8, as the original's ``custom_to_np`` (`ldm.pixels.to_uint8`)."""
    from ldm.pixels import to_uint8_hwc

    return to_uint8_hwc(x)


def parse_overrides(unknown: list[str]) -> list[str]:
    """The extra ``key=value`` config overrides; ValueError for anything else."""
    bad = [u for u in unknown if u.startswith("-") or "=" not in u]
    if bad:
        raise ValueError(f"unrecognized arguments {bad}; extra arguments must be config overrides key=value")
    return unknown


def main(argv: list[str] | None = None) -> list[Path]:
    """Run the script; returns the paths it wrote."""
    now = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    opt, unknown = get_parser().parse_known_args(argv)
    overrides = parse_overrides(unknown)
    cli.check_positive("-n/--n_samples", opt.n_samples)
    cli.check_positive("--batch_size", opt.batch_size)
    cli.check_positive("-c/--custom_steps", opt.custom_steps)
    files = cli.model_files(opt, ckpt=opt.ckpt or opt.resume, flag="--ckpt" if opt.ckpt else "-r/--resume")
    from omegaconf import OmegaConf

    config = OmegaConf.merge(inputs.load_config(files.configs), OmegaConf.from_dotlist(overrides))
    inputs.check_conditioning(config.model, (None,), "sample_diffusion.py", ", ".join(map(str, files.configs)))
    logdir = str(files.folder)
    if opt.logdir != "none":
        logdir = os.path.join(opt.logdir, files.folder.name)

    cli.setup_threads(opt)
    from ldm.sampler_registry import sampler_spec
    from ldm.scripting import loading, outputs, sampler_options

    sampler_name = sampler_options.resolve_sampler(opt, eta=opt.eta)
    if not sampler_spec(sampler_name).fixed_steps:
        inputs.check_steps(config.model, opt.custom_steps, "-c/--custom_steps")
    device = loading.choose_device(opt.device)
    loading.autocast_dtype(opt.precision, device)  # a bad --precision fails before loading
    outputs.check_outdir(os.path.join(logdir, "samples"), flag="-l/--logdir")
    ckpt = files.ckpt
    model, meta = loading.load_model(config, ckpt, device, compile_unet=opt.compile)
    global_step = meta.get("global_step")
    if global_step is None:
        logger.warning("checkpoint %s stores no global_step; writing under step 0", ckpt)
        global_step = 0
    print(f"global step: {global_step}")

    run_dir = str(outputs.claim_dir(os.path.join(logdir, "samples", f"{int(global_step):08}", now)))
    imglogdir = os.path.join(run_dir, "img")
    numpylogdir = os.path.join(run_dir, "numpy")
    os.makedirs(imglogdir)
    os.makedirs(numpylogdir)
    print(75 * "=")
    print(f"logging to:\n{run_dir}")
    print(75 * "=")
    summary = outputs.OutputSummary()
    sampling_conf = vars(opt).copy()
    sampling_conf["sampler"] = sampler_name
    sampling_file = os.path.join(run_dir, "sampling_config.yaml")
    import yaml

    with open(sampling_file, "w") as f:
        yaml.dump(sampling_conf, f, default_flow_style=False)
    summary.add(sampling_file)

    loading.seed_everything(opt.seed)
    run(model, sampler_name, imglogdir, numpylogdir, opt, summary)
    summary.print()
    return summary.paths


def run(model: torch.nn.Module, sampler_name: str, imglogdir: str, numpylogdir: str, opt: argparse.Namespace,
        summary: Any) -> None:
    """Draw ``opt.n_samples`` samples in batches; write each as PNG and all of them as one .npz."""
    import numpy as np

    from ldm.sampler_registry import run_steps, sampler_spec
    from ldm.scripting import generate, loading, outputs

    steps = run_steps(sampler_name, opt.custom_steps, model.num_timesteps)
    if sampler_spec(sampler_name).fixed_steps:
        print(f"Using Vanilla DDPM sampling with {steps} sampling steps.")
    else:
        print(f"Using {sampler_name} sampling with {steps} sampling steps and eta={opt.eta}")
    unet = model.model.diffusion_model
    shape = (unet.in_channels, unet.image_size, unet.image_size)
    batches = generate.plan_batches(opt.n_samples, opt.batch_size)
    device = next(model.parameters()).device
    tstart = time.time()
    n_saved = len(glob.glob(os.path.join(imglogdir, "*.png")))
    all_images = []
    print(f"Running unconditional sampling for {opt.n_samples} samples")
    with loading.sampling_scope(model, opt.precision, device):
        for out in generate.generate(model, sampler_name, opt.custom_steps, batches, eta=opt.eta, shape=shape,
                                     desc="Sampling (unconditional)"):
            print(f"Throughput for this batch: {out.batch.size / out.seconds:.3f} samples/s")
            images = out.uint8()
            for image in images:
                path = os.path.join(imglogdir, f"sample_{n_saved:06}.png")
                summary.add(outputs.save_array_image(image, path))
                n_saved += 1
            all_images.append(images)
    all_img = np.concatenate(all_images, axis=0)
    shape_str = "x".join(str(x) for x in all_img.shape)
    nppath = os.path.join(numpylogdir, f"{shape_str}-samples.npz")
    summary.add(outputs.save_npz(nppath, all_img))
    print(f"sampling of {n_saved} images finished in {(time.time() - tstart) / 60.:.2f} minutes.")


if __name__ == "__main__":
    cli.run_script(main)
