"""Sample quality against the number of model evaluations, for every sampler in the registry
(:data:`ldm.models.diffusion.sampling.SAMPLERS`), and against the classifier-free guidance scale
(Ho & Salimans 2021), on one model.

Each point (sampler, steps, guidance scale) samples the same classes with the same seeds and scores
them (for the demo model: the shapes classifier's Frechet distance and class accuracy). The model
evaluations are counted, not assumed: the calls of ``apply_model`` for one trajectory (a guided step
runs the conditional and unconditional branches in one batched call, counted once). Ancestral DDPM
sampling runs all training steps, so it is one point per scale. Results are written as JSON after
every point, so an interrupted study resumes where it stopped, and drawn with matplotlib: quality
against model evaluations, and, over several scales, the guidance trade-off (raising the scale moves
samples towards their class and away from the spread of the data).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from ldm.checkpoint import atomic_path
from ldm.sampler_registry import SAMPLERS

logger = logging.getLogger(__name__)

Point = tuple[str, int, float]


def study_points(samplers: list[str] | None, steps: tuple[int, ...], ddpm_steps: int,
                 scales: tuple[float, ...] = (1.0,)) -> list[Point]:
    """(sampler, steps, scale) points: every registered sampler (or those named) at every step count (those with
    fixed steps, DDPM, at ``ddpm_steps`` only) and every guidance scale."""
    names = list(SAMPLERS) if samplers is None else samplers
    unknown = [n for n in names if n not in SAMPLERS]
    if unknown:
        raise ValueError(f"unknown samplers {unknown}; registered: {', '.join(SAMPLERS)}")
    points = []
    for name in names:
        for scale in scales:
            points += [(name, ddpm_steps, scale)] if SAMPLERS[name].fixed_steps else [(name, s, scale) for s in steps]
    return sorted(points, key=lambda p: p[1])  # cheapest first: an interrupted study has the whole low end


def _point(record: dict[str, Any]) -> Point:
    return record["sampler"], record["steps"], float(record["scale"])


def run_study(score: Callable[[str, int, float], dict[str, Any]], points: list[Point], out: str | os.PathLike,
              settings: dict[str, Any]) -> dict[str, Any]:
    """Score every (sampler, steps, scale) point not already in ``out`` (a JSON written by an earlier run with
    the same ``settings``), writing ``out`` after each; returns the whole study."""
    out = Path(out)
    study = {"settings": settings, "results": []}
    if out.is_file():
        previous = json.loads(out.read_text(encoding="utf-8"))
        if previous.get("settings") == settings:
            study = previous
        else:
            logger.warning("%s holds a study with other settings; starting afresh", out)
    done = {_point(r) for r in study["results"]}
    for name, steps, scale in points:
        if (name, steps, float(scale)) in done:
            continue
        try:
            record = score(name, steps, scale)
        except ValueError as err:  # a sampler that does not take this setting: recorded, not fatal
            logger.warning("sampler %s with %d steps, guidance %g: %s", name, steps, scale, err)
            record = {"error": str(err)}
        study["results"].append({"sampler": name, "steps": steps, "scale": float(scale), **record})
        write_study(study, out)
        logger.info("sampler %s, %d steps, guidance %g: %s", name, steps, scale, record)
    return study


def write_study(study: dict[str, Any], path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(study, indent=2) + "\n", encoding="utf-8")
    return Path(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike, title: str) -> Path:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)
    return Path(path)


def _grouped(study: dict[str, Any], key: Callable[[dict[str, Any]], Any]) -> dict[Any, list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in study["results"]:
        if "error" not in r:
            groups.setdefault(key(r), []).append(r)
    return groups


def plot_study(study: dict[str, Any], path: str | os.PathLike, metric: str = "fd", metric_label: str = "FD",
               second: str | None = "accuracy", second_label: str = "class accuracy", title: str = "") -> Path:
    """Draw ``metric`` (and ``second``) against model evaluations, one line per sampler (and guidance scale,
    when the study has several), log-scaled x."""
    plt = _pyplot()
    panels = [(metric, metric_label)] + ([(second, second_label)] if second else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    several_scales = len({r["scale"] for r in study["results"]}) > 1
    lines = _grouped(study, lambda r: f"{r['sampler']}, guidance {r['scale']:g}" if several_scales else r["sampler"])
    for ax, (key, label) in zip(axes[0], panels):
        for name, rows in lines.items():
            rows = sorted(rows, key=lambda r: r["model_evaluations"])
            x = [r["model_evaluations"] for r in rows]
            y = [r[key] for r in rows]
            ax.plot(x, y, marker="o", linestyle="-" if len(rows) > 1 else "none", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("model evaluations per sample")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path, title)


def plot_guidance(study: dict[str, Any], path: str | os.PathLike, metric: str = "fd", metric_label: str = "FD",
                  second: str = "accuracy", second_label: str = "class accuracy", title: str = "",
                  floor: float | None = None) -> Path:
    """Draw ``metric`` and ``second`` against the guidance scale, and ``metric`` against ``second`` (each point
    labelled with its scale: the trade-off curve), one line per sampler and step count."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16.5, 4))
    lines = _grouped(study, lambda r: f"{r['sampler']}, {r['steps']} steps")
    for name, rows in lines.items():
        rows = sorted(rows, key=lambda r: r["scale"])
        scales = [r["scale"] for r in rows]
        for ax, key in ((axes[0], metric), (axes[1], second)):
            ax.plot(scales, [r[key] for r in rows], marker="o", label=name)
        axes[2].plot([r[second] for r in rows], [r[metric] for r in rows], marker="o", label=name)
        for r in rows:
            axes[2].annotate(f"{r['scale']:g}", (r[second], r[metric]), textcoords="offset points", xytext=(4, 4),
                             fontsize="small")
    if floor is not None:
        axes[0].axhline(floor, color="grey", linestyle=":", label="two real sets")
    for ax, xlabel, ylabel in ((axes[0], "guidance scale", metric_label), (axes[1], "guidance scale", second_label),
                               (axes[2], second_label + " (labels: guidance scale)", metric_label)):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path, title)
