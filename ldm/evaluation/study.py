"""Sample quality against the number of model evaluations, for every sampler in the registry
(:data:`ldm.models.diffusion.sampling.SAMPLERS`), on one model.

Each point samples the same classes with the same seeds and scores them (for the demo model: the
shapes classifier's Frechet distance and class accuracy). The model evaluations are counted, not
assumed: the calls of ``apply_model`` for one trajectory (a guided step runs the conditional and
unconditional branches in one batched call, counted once). Ancestral DDPM sampling runs all training
steps, so it is one point. Results are written as JSON after every point, so an interrupted study
resumes where it stopped, and drawn with matplotlib.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from ldm.samplers import SAMPLERS
from ldm.util import atomic_path

logger = logging.getLogger(__name__)



def study_points(samplers: list[str] | None, steps: tuple[int, ...], ddpm_steps: int) -> list[tuple[str, int]]:
    """(sampler, steps) pairs: every registered sampler (or those named) at every step count; DDPM once."""
    names = list(SAMPLERS) if samplers is None else samplers
    unknown = [n for n in names if n not in SAMPLERS]
    if unknown:
        raise ValueError(f"unknown samplers {unknown}; registered: {', '.join(SAMPLERS)}")
    points = []
    for name in names:
        points += [(name, ddpm_steps)] if name == "ddpm" else [(name, s) for s in steps]
    return sorted(points, key=lambda p: p[1])  # cheapest first: an interrupted study has the whole low end


def run_study(score: Callable[[str, int], dict[str, Any]], points: list[tuple[str, int]], out: str | os.PathLike,
              settings: dict[str, Any]) -> dict[str, Any]:
    """Score every (sampler, steps) point not already in ``out`` (a JSON written by an earlier run with the
    same ``settings``), writing ``out`` after each; returns the whole study."""
    out = Path(out)
    study = {"settings": settings, "results": []}
    if out.is_file():
        previous = json.loads(out.read_text(encoding="utf-8"))
        if previous.get("settings") == settings:
            study = previous
        else:
            logger.warning("%s holds a study with other settings; starting afresh", out)
    done = {(r["sampler"], r["steps"]) for r in study["results"]}
    for name, steps in points:
        if (name, steps) in done:
            continue
        try:
            record = score(name, steps)
        except ValueError as err:  # a sampler that does not take this setting: recorded, not fatal
            logger.warning("sampler %s with %d steps: %s", name, steps, err)
            record = {"error": str(err)}
        study["results"].append({"sampler": name, "steps": steps, **record})
        write_study(study, out)
        logger.info("sampler %s, %d steps: %s", name, steps, record)
    return study


def write_study(study: dict[str, Any], path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(study, indent=2) + "\n", encoding="utf-8")
    return Path(path)


def plot_study(study: dict[str, Any], path: str | os.PathLike, metric: str = "fd", metric_label: str = "FD",
               second: str | None = "accuracy", second_label: str = "class accuracy", title: str = "") -> Path:
    """Draw ``metric`` (and ``second``) against model evaluations, one line per sampler, log-scaled x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(metric, metric_label)] + ([(second, second_label)] if second else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    by_sampler: dict[str, list[dict]] = {}
    for r in study["results"]:
        if "error" not in r:
            by_sampler.setdefault(r["sampler"], []).append(r)
    for ax, (key, label) in zip(axes[0], panels):
        for name, rows in by_sampler.items():
            rows = sorted(rows, key=lambda r: r["model_evaluations"])
            x = [r["model_evaluations"] for r in rows]
            y = [r[key] for r in rows]
            ax.plot(x, y, marker="o", linestyle="-" if len(rows) > 1 else "none", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("model evaluations per sample")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
