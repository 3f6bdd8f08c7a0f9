"""The scripts in scripts/ run in-process: each imported as a module, txt2img run on a checkpoint, its PNGs
read back, model loading forbidden before an argument error, and inpainting inputs (images and masks)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import REPO
from ldm.scripting import loading


def load_script(name: str):
    """The module scripts/<name>.py, imported afresh."""
    spec = importlib.util.spec_from_file_location(f"ldm_script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SCRIPTS: dict[str, object] = {}


def script(name: str):
    """The module scripts/<name>.py, imported once."""
    if name not in _SCRIPTS:
        _SCRIPTS[name] = load_script(name)
    return _SCRIPTS[name]


def run_txt2img(config, ckpt, outdir, *extra):
    """scripts/txt2img.py on "a red circle": 2 x 2 samples of 16 x 16, 3 DDIM steps, on the CPU."""
    argv = ["--prompt", "a red circle", "--outdir", str(outdir), "--config", str(config), "--ckpt", str(ckpt),
            "--ddim_steps", "3", "--n_samples", "2", "--n_iter", "2", "--H", "16", "--W", "16", "--scale", "3.0",
            "--device", "cpu", *extra]
    return script("txt2img").main(argv)


def png(path: Path) -> np.ndarray:
    """The pixels of an image file."""
    return np.array(Image.open(path))


def forbid_model_loading(monkeypatch) -> None:
    """Argument errors must come before any model is built."""
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the argument error was raised")
    monkeypatch.setattr(loading, "load_model", fail)


def make_inpainting_pairs(folder: Path, n: int = 2, size: int = 16) -> list[str]:
    """``n`` random images with their masks (exN.png, exN_mask.png) in ``folder``; returns the image names."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[4:12, 2 + i:10 + i] = 255
        Image.fromarray(image).save(folder / f"ex{i}.png")
        Image.fromarray(mask).save(folder / f"ex{i}_mask.png")
        names.append(f"ex{i}.png")
    return names
