"""Training throughput of the small demo configs: images per second and peak memory.

    python benchmarks/train_throughput.py                 # CPU, the configs in configs/demo/
    python benchmarks/train_throughput.py --device cuda --steps 50

Each config is built from its YAML, then trained for ``--warmup`` steps (not timed) and ``--steps``
timed steps on batches of the embedded shapes dataset, through the model's own ``training_step``
logic (for the autoencoder: the generator step, then the discriminator step, as in training with the
discriminator switched on). Each config runs in a process of its own; peak memory is that process's
peak resident set size on the CPU (the Python interpreter, torch and the data included), and
``torch.cuda.max_memory_allocated`` on CUDA.
"""
from __future__ import annotations

import argparse
import gc
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ldm.util import instantiate_from_config

CONFIGS = {
    "autoencoder_kl_shapes": REPO / "configs" / "demo" / "autoencoder_kl_shapes.yaml",
    "ldm_shapes_uncond": REPO / "configs" / "demo" / "ldm_shapes_uncond.yaml",
    "ldm_shapes_cond": REPO / "configs" / "demo" / "ldm_shapes_cond.yaml",
}


def batches(config, device: torch.device, n: int):
    dataset = instantiate_from_config(config.data.params.train)
    loader = DataLoader(dataset, batch_size=config.data.params.batch_size, shuffle=True, drop_last=True)
    out = []
    for batch in loader:
        out.append({k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()})
        if len(out) == n:
            return out
    raise ValueError(f"the dataset has fewer than {n} batches")


def autoencoder_step(model, batch, opts) -> None:
    opt_ae, opt_disc = opts
    x = model.get_input(batch, model.image_key)
    rec, posterior = model(x)
    step = max(model.loss.discriminator_iter_start, 0)  # a step where the discriminator is on
    aeloss, _ = model.loss(x, rec, posterior, 0, step, last_layer=model.get_last_layer(), split="train")
    opt_ae.zero_grad(set_to_none=True)
    aeloss.backward()
    opt_ae.step()
    discloss, _ = model.loss(x, rec.detach(), posterior, 1, step, last_layer=model.get_last_layer(), split="train")
    opt_disc.zero_grad(set_to_none=True)
    discloss.backward()
    opt_disc.step()


def diffusion_step(model, batch, opts) -> None:
    (opt,) = opts
    loss, _ = model.shared_step(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if model.use_ema:
        model.model_ema(model.model)


def run(name: str, path: Path, device: torch.device, steps: int, warmup: int) -> dict:
    config = OmegaConf.load(path)
    if "first_stage_config" in config.model.params:
        config.model.params.first_stage_config.params.ckpt_path = None
    model = instantiate_from_config(config.model).to(device)
    model.learning_rate = 1.0e-4
    model.train()
    is_ae = hasattr(model, "loss") and hasattr(model.loss, "discriminator")
    if is_ae:
        params = list(model.encoder.parameters()) + list(model.decoder.parameters()) + \
            list(model.quant_conv.parameters()) + list(model.post_quant_conv.parameters())
        opts = (torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.9)),
                torch.optim.Adam(model.loss.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9)))
        step_fn = autoencoder_step
    else:
        opts = (torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4),)
        step_fn = diffusion_step
    data = batches(config, device, warmup + steps)
    bs = config.data.params.batch_size
    for batch in data[:warmup]:
        step_fn(model, batch, opts)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    gc.collect()
    start = time.perf_counter()
    for batch in data[warmup:]:
        step_fn(model, batch, opts)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"name": name, "batch": bs, "params_M": trainable / 1e6, "s_per_step": elapsed / steps,
            "img_per_s": bs * steps / elapsed, "peak_MiB": peak}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--steps", type=int, default=20, help="timed steps per config")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS), help="which configs")
    p.add_argument("--row", action="store_true", help=argparse.SUPPRESS)
    opt = p.parse_args(argv)
    device = torch.device(opt.device)
    torch.manual_seed(0)
    if opt.row:  # one config in this process, so that its peak memory is its own
        r = run(opt.configs[0], CONFIGS[opt.configs[0]], device, opt.steps, opt.warmup)
        print(f"{r['name']:<24}{r['batch']:>6}{r['params_M']:>12.2f}{r['s_per_step']:>9.3f}"
              f"{r['img_per_s']:>9.1f}{r['peak_MiB']:>10.0f}", flush=True)
        return
    print(f"device: {device}  torch {torch.__version__}  threads: {torch.get_num_threads()}")
    print(f"{'config':<24}{'batch':>6}{'params (M)':>12}{'s/step':>9}{'img/s':>9}{'peak MiB':>10}", flush=True)
    for name in opt.configs:
        subprocess.run([sys.executable, __file__, "--row", "--configs", name, "--device", opt.device,
                        "--steps", str(opt.steps), "--warmup", str(opt.warmup)], check=True)


if __name__ == "__main__":
    main()
