"""The benchmark's command line: row selection and its errors (the measurements themselves are benchmarks)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

from conftest import REPO

RUN_ALL = REPO / "benchmarks" / "run_all.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN_ALL), *args], capture_output=True, text=True, cwd=REPO)


def test_default_rows_cover_each_mode_and_both_acceptance_unets():
    rows = _run("--list").stdout.split()
    assert {r.split(":")[0] for r in rows} >= {"forward", "sample", "train", "highres"}
    for unet in ("celebahq-ldm-vq-4", "txt2img-1p4B-eval"):
        assert f"forward:{unet}:fp32" in rows and f"forward:{unet}:bf16" in rows


def test_rows_by_config_and_mode():
    rows = _run("--list", "--configs", "cin256-v2", "--modes", "forward,startup").stdout.split()
    assert rows == ["forward:cin256-v2:fp32", "forward:cin256-v2:bf16", "startup:cin256-v2:fp32"]


def test_bad_row_is_refused_in_one_line():
    proc = _run("--rows", "forward:nope:fp32")
    assert proc.returncode != 0
    assert "row 'forward:nope:fp32' must be mode:config:precision" in proc.stderr


def test_compiled_rows_are_accepted_where_they_apply():
    rows = _run("--list", "--rows", "forward:celebahq-ldm-vq-4:fp32+compile,sample:cin256-v2:bf16+compile").stdout
    assert rows.split() == ["forward:celebahq-ldm-vq-4:fp32+compile", "sample:cin256-v2:bf16+compile"]
    for bad in ("startup:cin256-v2:fp32+compile", "forward:cin256-v2:fp32+jit"):
        proc = _run("--list", "--rows", bad)
        assert proc.returncode != 0 and f"row {bad!r} must be" in proc.stderr and "+compile" in proc.stderr


def test_unet_gflop_counts_the_arithmetic_of_a_row():
    """The floor column's FLOP count, on the meta device: a training step with gradient checkpointing does the
    forward twice and the backward once (about twice a forward), so it counts close to four forwards."""
    from omegaconf import OmegaConf

    spec = importlib.util.spec_from_file_location("run_all", RUN_ALL)
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)

    unet = OmegaConf.load(run_all.CONFIGS["txt2img-1p4B-eval"]).model.params.unet_config
    forward = run_all.unet_gflop(unet, "forward", 2, None)
    train = run_all.unet_gflop(unet, "train", 2, None)
    highres = run_all.unet_gflop(unet, "highres", 2, run_all.HIGHRES)
    assert 300 < forward < 450  # the U-Net's convolutions alone are 209 GFLOP at batch 2
    assert 3.4 < train / forward < 4.0
    assert highres > 6 * forward  # 6x the latent pixels (48x128 against 32x32); attention grows with their square
