"""Helpers the test modules share, one module per concern (tests/ is on sys.path, so a test module writes
``from helpers.models import tiny_ldm``): tiny models, sampler stand-ins, checkpoints and pretrained folders,
the scripts, the evaluation, main.py runs. Shared pytest fixtures live in tests/conftest.py."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
