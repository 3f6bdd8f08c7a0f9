"""Defaults of the evaluation tools, in a module that imports nothing heavy (the scripts' ``--help``
lists them before torch is loaded)."""
from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]

#: torch-fidelity's defaults (and ADM's evaluator's k for precision/recall).
ISC_SPLITS = 10
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PRC_NEIGHBORHOOD = 3
RNG_SEED = 2020
#: Metric names accepted by --metrics: torch-fidelity's four on Inception features, sFID on Inception's
#: spatial features, the Frechet distance of DINOv2 features and the CLIP score.
METRIC_NAMES = ("fid", "isc", "kid", "prc", "sfid", "fd_dinov2", "clip_score")
#: The metrics computed by default.
DEFAULT_METRICS = "fid,isc,kid,prc"
#: The model-zoo registry.
REGISTRY = _REPO / "models" / "model_zoo.yaml"
#: Where scripts/demo.py writes its runs.
DEMO_OUTDIR = _REPO / "outputs" / "demo"
#: Classifier-free guidance scale of the demo's samples (scripts/demo.py, evaluate_demo.py, sampler_study.py).
DEMO_GUIDANCE = 6.0
#: Sampler steps of the sampler study (ancestral DDPM runs all training steps instead).
STUDY_STEPS = (5, 10, 20, 50, 100)
#: Environment variable naming the folder of the reference-feature and classifier cache.
CACHE_ENV = "LDM_EVAL_CACHE"


def default_cache_dir() -> Path:
    """``$LDM_EVAL_CACHE``, else ``$XDG_CACHE_HOME/ldm/evaluation`` (``~/.cache/ldm/evaluation``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ldm" / "evaluation"


def parse_metrics(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"fid,isc"`` -> ("fid", "isc"); ValueError naming an unknown metric."""
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown or not names:
        raise ValueError(f"--metrics must be a comma-separated list of {', '.join(METRIC_NAMES)}; got {spec!r}")
    return tuple(dict.fromkeys(names))
