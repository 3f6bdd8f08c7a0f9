"""The embedded demo: train a small autoencoder and a class-conditional LDM on generated shapes, then sample.

    python scripts/demo.py                       # what `make demo` runs
    python scripts/demo.py --ae_steps 200 --ldm_steps 500 --outdir outputs/quick
    python scripts/demo.py --ldm_run outputs/demo/logs/<timestamp>_demo_ldm --scale 2   # only sample again

Nothing is downloaded: the dataset (ldm/data/synthetic.py) is drawn by the code. The three stages are
ordinary `main.py` runs with the configs in configs/demo/, followed by DDIM sampling with
classifier-free guidance. The grid has one row per class, in the dataset's class order.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

from ldm.evaluation.settings import DEMO_GUIDANCE
from ldm.threads import apply_threads, choose_threads, parse_threads

progress = logging.getLogger("demo")
AE_CONFIG = REPO / "configs" / "demo" / "autoencoder_kl_shapes.yaml"
LDM_CONFIG = REPO / "configs" / "demo" / "ldm_shapes_cond.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outdir", default="outputs/demo", help="where runs and the sample grid go")
    p.add_argument("--ae_steps", type=int, default=2000, help="autoencoder optimizer steps (generator + discriminator)")
    p.add_argument("--ldm_steps", type=int, default=2500, help="LDM optimizer steps")
    p.add_argument("--n_per_class", type=int, default=8, help="samples per class in the grid")
    p.add_argument("--ddim_steps", type=int, default=50, help="DDIM steps for sampling")
    p.add_argument("--scale", type=float, default=DEMO_GUIDANCE, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0, help="seed for training and sampling")
    p.add_argument("--ldm_run", default=None,
                   help="an earlier demo LDM run folder: skip training and only draw the sample grid from it")
    p.add_argument("--accelerator", default="cpu", help="Lightning accelerator for training (cpu, gpu, auto)")
    p.add_argument("--threads", default=None, metavar="N",
                   help="CPU threads (default: the cores not busy with other work, or OMP_NUM_THREADS)")
    return p.parse_args(argv)


def train(config: Path, name: str, logroot: Path, steps: int, seed: int, accelerator: str, threads: str | None,
          *overrides: str) -> Path:
    """One main.py run; ``threads`` None lets it choose (and revisit) the thread count itself."""
    import main as trainer_main

    before = set(logroot.glob("*")) if logroot.exists() else set()
    trainer_main.main(["-b", str(config), "-t", "--no-test", "-n", name, "-l", str(logroot), "-s", str(seed),
                       "--accelerator", accelerator, "--devices", "1",
                       *(["--threads", threads] if threads is not None else []), f"lightning.trainer.max_steps={steps}",
                       *overrides])
    (logdir,) = set(logroot.glob("*")) - before
    return logdir


def main(argv: list[str] | None = None) -> Path:
    opt = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # The progress lines (a terminal shows the bar instead) and the thread report.
    for name in ("ldm.callbacks.progress", "ldm.threads", "demo"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        parse_threads(opt.threads, "--threads")
    except ValueError as err:
        raise SystemExit(f"demo.py: error: {err}")

    import torch
    import torch.nn.functional as F
    from omegaconf import OmegaConf

    from ldm.data.synthetic import CLASSES
    from ldm.models.diffusion.ddim import DDIMSampler
    from ldm.scripting.loading import load_model
    from ldm.scripting.outputs import save_grid

    outdir = (REPO / opt.outdir) if not os.path.isabs(opt.outdir) else Path(opt.outdir)
    logroot = outdir / "logs"
    started = time.time()

    if opt.ldm_run is not None:
        ldm_dir = Path(opt.ldm_run)
        if not (ldm_dir / "checkpoints" / "last.ckpt").is_file():
            raise SystemExit(f"demo.py: error: --ldm_run {ldm_dir}: no checkpoints/last.ckpt there (expected a run "
                             f"folder of the demo LDM, outputs/demo/logs/<timestamp>_demo_ldm)")
        ae_dir = None
    else:
        print(f"[1/3] training the autoencoder ({opt.ae_steps} steps) on generated shapes", flush=True)
        ae_dir = train(AE_CONFIG, "demo_autoencoder", logroot, opt.ae_steps, opt.seed, opt.accelerator,
                       opt.threads)
        ae_ckpt = ae_dir / "checkpoints" / "last.ckpt"

        print(f"[2/3] training the class-conditional LDM ({opt.ldm_steps} steps) in its latent space", flush=True)
        ldm_dir = train(LDM_CONFIG, "demo_ldm", logroot, opt.ldm_steps, opt.seed, opt.accelerator, opt.threads,
                        f"model.params.first_stage_config.params.ckpt_path={ae_ckpt}")

    print(f"[3/3] sampling {opt.n_per_class} images per class (DDIM {opt.ddim_steps} steps, guidance {opt.scale})",
          flush=True)
    logging.getLogger("ldm.threads").info(apply_threads(choose_threads(opt.threads)).describe())
    config = OmegaConf.load(LDM_CONFIG)
    config.model.params.first_stage_config.params.ckpt_path = None
    device = torch.device("cuda" if opt.accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu")
    model, _ = load_model(config, ldm_dir / "checkpoints" / "last.ckpt", device)
    null_class = config.model.params.ucg_class  # the label trained as "no class"
    classes = CLASSES[:null_class]
    sampler = DDIMSampler(model)
    torch.manual_seed(opt.seed)
    rows = []
    with torch.no_grad(), model.ema_scope("demo sampling"):
        uc = model.get_learned_conditioning({"class_label": torch.full((opt.n_per_class,), null_class, device=device)})
        for label in range(len(classes)):
            c = model.get_learned_conditioning({"class_label": torch.full((opt.n_per_class,), label, device=device)})
            z, _ = sampler.sample(S=opt.ddim_steps, batch_size=opt.n_per_class, shape=model_shape(model),
                                  conditioning=c, eta=0.0, unconditional_guidance_scale=opt.scale,
                                  unconditional_conditioning=uc, verbose=False)
            x = model.decode_first_stage(z).clamp(-1, 1)
            rows.append(F.interpolate((x + 1) / 2, scale_factor=4, mode="nearest"))
            progress.info("sampled class %d/%d (%s)", label + 1, len(classes), classes[label])
    grid_path = save_grid(torch.cat(rows).cpu(), outdir / "samples.png", nrow=opt.n_per_class)
    minutes = (time.time() - started) / 60
    names = ", ".join(classes)
    print(f"\nDone in {minutes:.1f} min.\n"
          f"  sample grid:        {grid_path}  (one row per class: {names})\n"
          + (f"  autoencoder run:    {ae_dir}\n" if ae_dir is not None else "")
          + f"  LDM run:            {ldm_dir}\n"
          f"  training image logs: {ldm_dir / 'images'}", flush=True)
    return grid_path


def model_shape(model: Any) -> tuple[int, int, int]:
    return (model.channels, model.image_size, model.image_size)


if __name__ == "__main__":
    main()
