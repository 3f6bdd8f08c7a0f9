"""The benchmark's command line: row selection and its errors (the measurements themselves are benchmarks)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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
