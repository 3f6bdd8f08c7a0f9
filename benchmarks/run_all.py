"""Speed and memory of the zoo U-Nets against the original implementation: ``make bench``.

    python benchmarks/run_all.py                                  # the default subset (about 20 minutes, 2 cores)
    python benchmarks/run_all.py --rows forward:celebahq-ldm-vq-4:bf16
    python benchmarks/run_all.py --configs txt2img-1p4B-eval --modes startup
    python benchmarks/run_all.py --all                            # every row (long: full-size checkpoints)
    python benchmarks/run_all.py --list                           # the rows there are

A row is ``mode:config:precision``:

- ``forward``: the U-Net (built from ``model.params.unet_config``) under ``torch.no_grad()`` in eval mode;
- ``sample``: one full sampling step of the whole LatentDiffusion (DDIM, one step, with classifier-free
  guidance at scale 5 for the conditional configs: the U-Net runs on the conditional and unconditional
  batch together);
- ``train``: forward and backward of ``out.square().mean()`` through the U-Net in train mode, with the
  config's gradient checkpointing;
- ``highres``: the ``forward`` row at 384x1024 pixels (a 48x128 latent), timed once (it is a memory row);
- ``startup``: ``scripts/txt2img.py`` (``sample_diffusion.py``, ``sample_cin.py`` for the other configs) from
  launch to its first U-Net call, with a full-size checkpoint this benchmark writes, next to building the
  model with its random initialization and then loading that checkpoint the plain way.

Weights and inputs follow the recipe of the original's figures (``../shared/perf/README.md``): seeded random
weights (``randn * fan_in ** -0.5`` for matrices, ``randn * 0.02`` for vectors), ``x = randn(batch,
in_channels, h, w)``, integer timesteps, ``context = randn(batch, 77, context_dim)``. Every row runs in a
process of its own. Times are medians over ``--rounds`` rounds of the median of ``--reps`` calls after a
warm-up; each round first times ``calibrate.calibration_s()`` (``../shared/perf/calibrate.py``) in the same
process, so a time is also given in its units, and the speed-up over the original is
``original units / our units`` (against the original's median, and its best in brackets). Peak memory is
the process's resident set size sampled every 2 ms (``torch.cuda.max_memory_allocated`` on CUDA); for
``highres`` it is split as in the original's figures into the loaded model and what the forward adds.
``max diff`` is the largest absolute difference from the float32 output of the same row. The timed calls of a
bf16 inference row run inside one ``torch.autocast`` region, as the sampling scripts run a whole sampling loop,
so each weight is cast to bf16 once (autocast's cast cache) and not on every call; a training row enters
autocast on every step, as training does.

``floor`` bounds what any implementation can reach with the row's arithmetic: its floating-point operations
(counted by ``torch.utils.flop_counter`` on a meta-device copy of the model: convolutions, matrix products
and attention, forward and backward) divided by the rate of the calibration's own convolution, which runs
at about the machine's peak. The rate is 96.6 GFLOP per unit at fp32; for bf16 it is measured in the row's
process as the same convolutions under autocast. ``ceiling`` is the original's median over that floor: the
largest speed-up a row can show without doing less arithmetic (for example with Winograd convolutions).

A precision may carry ``+compile``: the U-Net then runs through ``torch.compile`` (Inductor, with frozen
weights for inference; ``ldm.compile``), timed after its compilation, which the row reports on its own.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFIGS = {
    "celebahq-ldm-vq-4": REPO / "configs" / "latent-diffusion" / "celebahq-ldm-vq-4.yaml",
    "cin256-v2": REPO / "configs" / "latent-diffusion" / "cin256-v2.yaml",
    "txt2img-1p4B-eval": REPO / "configs" / "latent-diffusion" / "txt2img-1p4B-eval.yaml",
}
MODES = ("forward", "sample", "train", "highres", "startup")
PRECISIONS = ("fp32", "bf16", "fp16")
#: Floating-point operations of one unit: ten 3x3 convolutions, batch 2, 256 -> 256 channels, 64x64.
UNIT_GFLOP = 10 * 2 * 2 * 256 * 256 * 9 * 64 * 64 / 1e9
#: Rows of ``make bench``: the two U-Nets of the acceptance figures and one of each other kind.
DEFAULT_ROWS = (
    "forward:celebahq-ldm-vq-4:fp32", "forward:celebahq-ldm-vq-4:bf16",
    "forward:txt2img-1p4B-eval:fp32", "forward:txt2img-1p4B-eval:bf16",
    "forward:cin256-v2:fp32", "forward:cin256-v2:bf16",
    "sample:txt2img-1p4B-eval:fp32", "sample:txt2img-1p4B-eval:bf16",
    "train:celebahq-ldm-vq-4:fp32", "train:celebahq-ldm-vq-4:bf16",
    "highres:txt2img-1p4B-eval:fp32",
    "forward:celebahq-ldm-vq-4:fp32+compile", "forward:celebahq-ldm-vq-4:bf16+compile",
    "forward:txt2img-1p4B-eval:fp32+compile", "forward:txt2img-1p4B-eval:bf16+compile",
)
HIGHRES = (384, 1024)
GUIDANCE_SCALE = 5.0
RSS_INTERVAL_S = 0.002
DEFAULT_PERF_DIR = REPO.parent / "shared" / "perf"
SCRIPTS = {"txt2img-1p4B-eval": "txt2img.py", "celebahq-ldm-vq-4": "sample_diffusion.py", "cin256-v2": "sample_cin.py"}


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


def rss_mb() -> float:
    """Resident memory of this process in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """The peak resident memory while the block runs, sampled every 2 ms by a thread (torch releases the GIL)."""

    def __enter__(self) -> PeakRSS:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(RSS_INTERVAL_S):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def load_calibration(perf_dir: Path):
    """``calibration_s`` of ``perf_dir/calibrate.py`` and the original's figures, or (None, {}) without them."""
    path = perf_dir / "calibrate.py"
    if not path.is_file():
        return None, {}
    spec = importlib.util.spec_from_file_location("ldm_bench_calibrate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = json.loads((perf_dir / "original.json").read_text())["figures"]
    return module.calibration_s, figures


def timed(fn, reps: int) -> float:
    """Median seconds of ``reps`` calls of ``fn`` after one warm-up call."""
    import torch

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bf16_speedup(calibration_s, threads: int) -> float:
    """How many times faster the calibration's convolutions (``calibration_s``) run under bf16 autocast than
    at fp32, here."""
    import torch

    seconds = {}
    for precision in ("fp32", "bf16", "fp32", "bf16"):  # interleaved: the later pair counts
        with autocast(precision, torch.device("cpu")):
            seconds[precision] = calibration_s(threads)
    return seconds["fp32"] / seconds["bf16"]


def unet_gflop(unet_config, mode: str, batch: int, hw: tuple[int, int] | None) -> float:
    """GFLOP of one call of a forward, highres or train row, counted on a meta-device copy of the U-Net."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ldm.util import instantiate_from_config

    meta = torch.device("meta")
    with meta:
        model = instantiate_from_config(unet_config)
    model.train(mode == "train")
    x, t, kwargs = unet_inputs(unet_config.params, batch, meta, hw)
    counter = FlopCounterMode(display=False)
    with counter:
        if mode == "train":  # with the config's gradient checkpointing, the recomputed forward counts too
            model(x, t, **kwargs).square().mean().backward()
        else:
            with torch.no_grad():
                model(x, t, **kwargs)
    return counter.get_total_flops() / 1e9


# --------------------------------------------------------------------------------------------------
# Models and inputs, by the recipe of the original's figures
# --------------------------------------------------------------------------------------------------


def recipe_state(model, seed: int = 0) -> dict:
    """Seeded weights for ``model``'s parameters: randn * fan_in**-0.5 for matrices, randn * 0.02 for vectors."""
    import torch

    g = torch.Generator().manual_seed(seed)
    state = {}
    # parameters, and buffers that copy them (EMA weights): everything the meta-device build left empty
    tensors = [*model.named_parameters(), *((n, b) for n, b in model.named_buffers() if b.is_meta)]
    for name, p in tensors:
        w = torch.randn(p.shape, generator=g)
        w.mul_(p.shape[1:].numel() ** -0.5 if p.ndim >= 2 else 0.02)
        state[name] = w
    return state


def build(target_config, device, seed: int = 0):
    """The module of a {target, params} config with recipe weights, built without a throw-away random init."""
    from ldm.scripting.loading import parameters_on_meta
    from ldm.util import instantiate_from_config

    with parameters_on_meta():
        model = instantiate_from_config(target_config)
    model.load_state_dict(recipe_state(model, seed), strict=False, assign=True)
    return model.to(device)


def unet_inputs(params, batch: int, device, hw: tuple[int, int] | None = None, seed: int = 1):
    import torch

    g = torch.Generator().manual_seed(seed)
    h, w = (params.image_size, params.image_size) if hw is None else (hw[0] // 8, hw[1] // 8)
    x = torch.randn(batch, params.in_channels, h, w, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    kwargs = {}
    if params.get("context_dim"):
        kwargs["context"] = torch.randn(batch, 77, params.context_dim, generator=g).to(device)
    if params.get("num_classes"):
        kwargs["y"] = torch.randint(0, params.num_classes, (batch,), generator=g).to(device)
    return x.to(device), t.to(device), kwargs


def autocast(precision: str, device):
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# --------------------------------------------------------------------------------------------------
# Rows (each in its own process)
# --------------------------------------------------------------------------------------------------


def run_row(mode: str, config_name: str, precision: str, args) -> dict:
    import torch
    from omegaconf import OmegaConf

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    calibration_s, figures = load_calibration(Path(args.perf_dir))
    config = OmegaConf.load(CONFIGS[config_name])
    batch = args.batch
    row = {"row": f"{mode}:{config_name}:{precision}", "batch": batch, "threads": args.threads,
           "device": args.device, "loadavg": os.getloadavg()[0]}
    precision, _, variant = precision.partition("+")
    compiled = variant == "compile"
    if mode == "startup":
        row.update(startup(config_name, config, args))
        return row

    if mode == "sample":
        model = build(config.model, device).eval()
        make = sampling_step(model, config, batch, device)
        key = None
    else:
        unet_config = config.model.params.unet_config
        model = build(unet_config, device)
        hw = HIGHRES if mode == "highres" else None
        x, t, kwargs = unet_inputs(unet_config.params, batch, device, hw)
        key = f"{'train' if mode == 'train' else 'forward'}:{config_name}:b{batch}" + (
            f":{hw[0]}x{hw[1]}" if hw else "")
        model.train(mode == "train")

        def make(prec: str):
            def train_step():
                model.zero_grad(set_to_none=True)
                with autocast(prec, device):
                    out = model(x, t, **kwargs)
                out.float().square().mean().backward()
                return out.detach()

            def forward():
                with torch.no_grad(), autocast(prec, device):
                    return model(x, t, **kwargs)

            return train_step if mode == "train" else forward

    fn = make(precision)
    row["model_rss_mb"] = round(rss_mb())
    ref = make("fp32")() if precision != "fp32" or compiled else None  # the eager float32 output
    if compiled:
        from ldm.compile import compile_unet

        if not compile_unet(model):
            raise RuntimeError("torch.compile is unavailable here (see the warning above)")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with PeakRSS() as peak:
        out = fn()  # the first call: its memory is what the original's forward_extra_mb counts
    if compiled:  # the first call compiled the U-Net; its peak memory includes the compiler's
        row["compile_s"] = time.perf_counter() - t0
    row["peak_rss_mb"] = round(peak.peak)
    row["extra_mb"] = round(peak.peak - row["model_rss_mb"])
    if device.type == "cuda":
        row["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    if ref is not None:
        row["max_diff"] = (out.float() - ref.float()).abs().max().item()
        row["ref_max"] = ref.float().abs().max().item()

    seconds, units = [], []
    rounds, reps = (1, 1) if mode == "highres" else (args.rounds, args.reps)  # a memory row; one call takes long
    for _ in range(rounds):
        calib = calibration_s(args.threads) if calibration_s is not None and device.type == "cpu" else None
        # inference rows run their calls inside one autocast region, as the sampling scripts run a whole sampling
        # loop: autocast then casts each weight to bf16 once (its cast cache) and not on every call
        with autocast(precision, device) if mode != "train" else contextlib.nullcontext():
            s = timed(fn, reps)
        seconds.append(s)
        if calib is not None:
            units.append(s / calib)
    row["seconds"] = statistics.median(seconds)
    if units:
        row["units"] = statistics.median(units)
        original = figures.get(key) if key else None
        if original is not None:
            row["speedup_vs_median"] = original["units_median"] / row["units"]
            row["speedup_vs_best"] = original["units_best"] / row["units"]
            if "forward_extra_mb" in original:
                row["original_peak_mb"] = original["model_rss_mb"] + original["forward_extra_mb"]
        if mode != "sample":
            row["gflop"] = unet_gflop(config.model.params.unet_config, mode, batch, hw)
            rate = UNIT_GFLOP * (bf16_speedup(calibration_s, args.threads) if precision == "bf16" else 1.0)
            row["floor_units"] = row["gflop"] / rate
            if original is not None:
                row["ceiling_vs_median"] = original["units_median"] / row["floor_units"]
    return row


def sampling_step(model, config, batch: int, device):
    """``make(precision)``: one DDIM step of the whole model (guided for conditional models) at that precision."""
    import torch

    from ldm.models.diffusion.sampling import make_sampler

    unet_params = config.model.params.unet_config.params
    shape = (model.channels, model.image_size, model.image_size)
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(batch, *shape, generator=g).to(device)
    c = uc = None
    if model.cond_stage_key == "class_label":
        c = model.get_learned_conditioning({"class_label": torch.arange(batch, device=device)})
        uc = model.get_learned_conditioning({"class_label": torch.full((batch,), 1000, device=device)})
    elif unet_params.get("context_dim"):
        c = torch.randn(batch, 77, unet_params.context_dim, generator=g).to(device)
        uc = torch.randn(batch, 77, unet_params.context_dim, generator=g).to(device)
    sampler = make_sampler("ddim", model)
    kwargs = dict(unconditional_guidance_scale=GUIDANCE_SCALE, unconditional_conditioning=uc) if c is not None else {}

    def make(precision: str):
        def step():
            with torch.no_grad(), autocast(precision, device):
                samples, _ = sampler.sample(S=1, batch_size=batch, shape=shape, conditioning=c, eta=0.0,
                                            verbose=False, x_T=x_T, **kwargs)
            return samples

        return step

    return make


# --------------------------------------------------------------------------------------------------
# Start-up
# --------------------------------------------------------------------------------------------------


PROBE = r'''
import os, sys, time
t_start = float(sys.argv[1]); mode = sys.argv[2]; out = sys.argv[3]
import runpy
import torch
torch.set_num_threads(int(sys.argv[4]))
from ldm.modules.diffusionmodules import openaimodel
forward = openaimodel.UNetModel.forward
def first_call(self, *a, **k):
    with open(out, "w") as f:
        f.write(str(time.time() - t_start))
    os._exit(0)
openaimodel.UNetModel.forward = first_call
if mode == "script":
    sys.argv = sys.argv[5:]
    runpy.run_path(sys.argv[0], run_name="__main__")
else:  # build with random initialization, then load the checkpoint the plain way
    from omegaconf import OmegaConf
    from ldm.scripting import loading
    model, _ = loading.load_model(OmegaConf.load(sys.argv[5]), sys.argv[6], torch.device("cpu"), empty_init=False)
    with open(out, "w") as f:
        f.write(str(time.time() - t_start))
'''


def startup(config_name: str, config, args) -> dict:
    """Seconds from launch to the first U-Net call of the script, and to a model built and loaded the plain way."""
    import torch
    from omegaconf import OmegaConf

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ldm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    if config_name == "txt2img-1p4B-eval":  # no download: the demo's tokenizer stands in for BERT's
        config.model.params.cond_stage_config.params.tokenizer_path = str(REPO / "data" / "demo_tokenizer")
    config_path, ckpt = work / f"{config_name}.yaml", work / f"{config_name}.ckpt"
    OmegaConf.save(config, config_path)
    if not ckpt.is_file():
        from ldm.scripting.inputs import strip_ckpt_paths

        model = build(strip_ckpt_paths(config.model), torch.device("cpu"))
        torch.save({"state_dict": model.state_dict(), "global_step": 0, "epoch": 0}, ckpt)
        del model
    out = {"checkpoint_mb": round(ckpt.stat().st_size / 2**20)}
    script = {"txt2img-1p4B-eval": ["--prompt", "a painting", "--n_samples", "1", "--ddim_steps", "1",
                                    "--H", "256", "--W", "256"],
              "cin256-v2": ["--classes", "88", "--n_samples", "1", "--ddim_steps", "1"],
              "celebahq-ldm-vq-4": ["-n", "1", "--batch_size", "1", "-c", "1", "-l", str(work / "logs")]}[config_name]
    ckpt_flag = "-r" if config_name == "celebahq-ldm-vq-4" else "--ckpt"
    script_argv = [str(REPO / "scripts" / SCRIPTS[config_name]), ckpt_flag, str(ckpt), "--config", str(config_path),
                   "--outdir", str(work / "out"), "--device", "cpu", *script] if config_name != "celebahq-ldm-vq-4" \
        else [str(REPO / "scripts" / SCRIPTS[config_name]), ckpt_flag, str(ckpt), "--config", str(config_path),
              "--device", "cpu", *script]
    results = {"script": [], "init_and_load": []}
    for _ in range(args.rounds):
        for mode, argv in (("script", script_argv), ("init_and_load", [str(config_path), str(ckpt)])):
            stamp = work / f"{mode}.time"
            stamp.unlink(missing_ok=True)
            t0 = time.time()
            proc = subprocess.run([sys.executable, "-c", PROBE, str(t0), mode, str(stamp), str(args.threads), *argv],
                                  capture_output=True, text=True)
            if not stamp.is_file():
                raise RuntimeError(f"start-up probe {mode} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
            results[mode].append(float(stamp.read_text()))
    out["startup_s"] = statistics.median(results["script"])
    out["init_and_load_s"] = statistics.median(results["init_and_load"])
    out["startup_ratio"] = out["startup_s"] / out["init_and_load_s"]
    out["seconds"] = out["startup_s"]
    return out


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


def fmt(row: dict) -> str:
    def f(key, spec, default="-"):
        return format(row[key], spec) if key in row else default

    speed = (f"{row['speedup_vs_median']:.2f}x ({row['speedup_vs_best']:.2f}x)" if "speedup_vs_median" in row
             else f"{row['startup_ratio']:.2f} of init+load ({row['init_and_load_s']:.1f}s)" if "startup_ratio" in row
             else "-")
    peak = f("peak_rss_mb", "d")
    if "original_peak_mb" in row:
        peak += f" ({row['peak_rss_mb'] / row['original_peak_mb']:.2f} of {row['original_peak_mb']})"
    floor = f"{row['floor_units']:.2f}" if "floor_units" in row else "-"
    if "ceiling_vs_median" in row:
        floor += f" ({row['ceiling_vs_median']:.2f}x)"
    seconds = f('seconds', '.3f') + (f" (+{row['compile_s']:.0f} to compile)" if "compile_s" in row else "")
    return (f"| {row['row']} | {row['batch']} | {seconds} | {f('units', '.2f')} | {speed} | {f('gflop', '.0f')} | "
            f"{floor} | {peak} | {f('extra_mb', 'd')} | {f('max_diff', '.2e')} |")


HEADER = ("| row | batch | seconds | units | speed-up over the original: median (best) | GFLOP | "
          "floor units (ceiling) | peak RSS MiB | forward adds MiB | max diff from fp32 |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def select_rows(args) -> list[str]:
    if args.rows:
        rows = [r for spec in args.rows for r in spec.split(",")]
    elif args.all or args.configs or args.modes or args.precisions:
        configs = args.configs.split(",") if args.configs else list(CONFIGS)
        modes = args.modes.split(",") if args.modes else [m for m in MODES]
        precisions = args.precisions.split(",") if args.precisions else ["fp32", "bf16"]
        rows = [f"{m}:{c}:{p}" for m in modes for c in configs for p in precisions
                if not (m == "startup" and p != "fp32")]
    else:
        rows = list(DEFAULT_ROWS)
    for row in rows:
        parts = row.split(":")
        precision, plus, variant = parts[-1].partition("+") if len(parts) == 3 else ("", "", "")
        if (len(parts) != 3 or parts[0] not in MODES or parts[1] not in CONFIGS or precision not in PRECISIONS
                or (plus and (variant != "compile" or parts[0] in ("startup", "highres")))):
            raise SystemExit(f"error: row {row!r} must be mode:config:precision with mode in {', '.join(MODES)}, "
                             f"config in {', '.join(CONFIGS)}, precision in {', '.join(PRECISIONS)}, optionally "
                             "followed by +compile (not for startup and highres rows)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rows", action="append", help="rows mode:config:precision, comma-separated")
    parser.add_argument("--configs", help=f"configs, comma-separated ({', '.join(CONFIGS)})")
    parser.add_argument("--modes", help=f"modes, comma-separated ({', '.join(MODES)})")
    parser.add_argument("--precisions", help="precisions, comma-separated (fp32, bf16; fp16 on CUDA)")
    parser.add_argument("--all", action="store_true", help="every mode, config and precision")
    parser.add_argument("--list", action="store_true", help="print the rows that would run and exit")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2, as the original's figures)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per row (median; default 3)")
    parser.add_argument("--reps", type=int, default=2, help="timed calls per round (median; default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--perf-dir", default=str(DEFAULT_PERF_DIR),
                        help="folder with the original's calibrate.py and original.json (default ../shared/perf)")
    parser.add_argument("--workdir", help="where the start-up rows write their checkpoints (default: a temp dir)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one row in this process
    args = parser.parse_args()
    if args.one:
        print("ROW " + json.dumps(run_row(*args.one.split(":"), args)))
        return
    rows = select_rows(args)
    if args.list:
        print("\n".join(rows))
        return
    if not (Path(args.perf_dir) / "calibrate.py").is_file():
        print(f"note: no calibrate.py in {args.perf_dir}: no units or speed-ups (--perf-dir)", file=sys.stderr)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.threads} threads, device {args.device}, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    print(HEADER, flush=True)
    results = []
    for row in rows:
        cmd = [sys.executable, __file__, "--one", row, "--batch", str(args.batch), "--rounds", str(args.rounds),
               "--reps", str(args.reps), "--threads", str(args.threads), "--device", args.device,
               "--perf-dir", args.perf_dir] + (["--workdir", args.workdir] if args.workdir else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("ROW ")]
        if proc.returncode or not lines:
            print(f"| {row} | failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]} |", flush=True)
            continue
        result = json.loads(lines[-1][4:])
        results.append(result)
        print(fmt(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
