"""main.py runs in this process on the tiny training configs of tests/configs/train: a run and its newest
run folder, a checkpoint read back, and a config whose training data is an image folder."""
from __future__ import annotations

from pathlib import Path

from helpers import REPO
from ldm.checkpoint import load_checkpoint

CONFIGS = REPO / "tests" / "configs" / "train"
QUIET = ["lightning.trainer.enable_progress_bar=false"]


def run_main(logroot: Path, *args: str) -> Path:
    """Run main.main in this process; returns the newest run directory under ``logroot``."""
    from main import main

    main(["-l", str(logroot), "--accelerator", "cpu", *args, *QUIET])
    runs = sorted(p for p in logroot.iterdir() if p.is_dir())
    assert runs, f"no run directory under {logroot}"
    return runs[-1]


def ckpt_state(path: Path) -> dict:
    """The checkpoint at ``path``, read as the project reads it."""
    return load_checkpoint(path)


def config_with_image_folder(tmp_path: Path, root: Path, base: Path = CONFIGS / "autoencoder_kl_tiny.yaml") -> Path:
    """``base`` with its training data replaced by the images of folder ``root``, saved under ``tmp_path``."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(base)
    cfg.data.params.train = {"target": "ldm.data.custom.ImageFolderDataset", "params": {"root": str(root), "size": 16}}
    path = tmp_path / "folder.yaml"
    OmegaConf.save(cfg, path)
    return path

