"""The model-zoo registry (``models/model_zoo.yaml``: every row of the two model-zoo tables of Rombach et
al., CVPR 2022) and reproducing a row: sample it with its settings, in batches that survive an
interruption, then evaluate the samples against a reference.

A run folder holds ``run.json`` (the settings: a rerun with other settings is refused rather than
mixing samples), ``samples/batch_NNNNNN.npz`` (each written atomically, batch ``b`` drawn with seed
``seed + b``, so a resumed run draws exactly the samples an uninterrupted one would) and
``results.json``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from ldm.evaluation.settings import REGISTRY
from ldm.checkpoint import atomic_path
from ldm.sampler_registry import check_run_options
from ldm.scripting.generate import generate, plan_batches
from ldm.scripting.outputs import save_npz
from ldm.util import resolve_path

logger = logging.getLogger(__name__)

#: Row kinds that reproduce.py can sample.
SAMPLED_KINDS = ("unconditional", "class", "text")
#: Table columns and the registry keys of their published figures.
LDM_COLUMNS = (("FID", "fid"), ("FID (ADM script)", "fid_adm"), ("IS", "isc_mean"), ("IS (ADM script)", "isc_adm"),
               ("Precision", "precision"), ("Recall", "recall"))


def load_registry(path: str | os.PathLike = REGISTRY) -> dict[str, list[dict[str, Any]]]:
    """The registry as plain data: {"first_stage": [row, ...], "ldm": [row, ...]}."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model-zoo registry not found: {p}")
    data = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
    for table in ("first_stage", "ldm"):
        if not isinstance(data.get(table), list):
            raise ValueError(f"registry {p} has no list '{table}'")
    return data


def find_row(registry: dict, name: str, table: str = "ldm") -> dict[str, Any]:
    """The row called ``name`` of ``table``; ValueError listing the names."""
    for row in registry[table]:
        if row["name"] == name:
            return row
    raise ValueError(f"no row {name!r} in the {table} table; rows: {', '.join(r['name'] for r in registry[table])}")


def check_reproducible(row: dict[str, Any], prompts: str | None = None) -> None:
    """ValueError when the row cannot be sampled by this command (and why)."""
    if row.get("reproducible", True) is False:
        raise ValueError(f"row {row['name']} cannot be reproduced by this command: {row.get('reason')}")
    if row["kind"] not in SAMPLED_KINDS:
        raise ValueError(f"row {row['name']} is of kind {row['kind']!r}; this command samples {', '.join(SAMPLED_KINDS)}")
    if row["kind"] == "text" and prompts is None:
        raise ValueError(f"row {row['name']} is text-conditional: give the captions to sample from with --prompts FILE "
                         f"(one per line, e.g. the captions of the evaluation set)")


def run_settings(row: dict[str, Any], config: str, ckpt: str, num_samples: int, batch_size: int, seed: int,
                 prompts: list[str] | None) -> dict[str, Any]:
    sampler = row.get("sampler", {})
    return {"row": row["name"], "config": str(config), "checkpoint": str(ckpt), "num_samples": num_samples,
            "batch_size": batch_size, "seed": seed, "sampler": sampler.get("name", "ddim"),
            "steps": sampler.get("steps"), "eta": sampler.get("eta", 0.0),
            "guidance_scale": row.get("guidance", {}).get("scale", 1.0), "num_prompts": len(prompts or [])}


def open_run(outdir: str | os.PathLike, settings: dict[str, Any]) -> Path:
    """Create or reopen a run folder; ValueError when it holds a run with other settings."""
    outdir = Path(outdir)
    run_json = outdir / "run.json"
    if run_json.is_file():
        previous = json.loads(run_json.read_text(encoding="utf-8"))
        changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if changed:
            raise ValueError(f"{outdir} holds a run with other settings ({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in changed.items())}); "
                             f"use another --outdir, or delete it to start afresh")
    else:
        with atomic_path(run_json) as tmp:
            Path(tmp).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    (outdir / "samples").mkdir(parents=True, exist_ok=True)
    return outdir


def batch_path(outdir: Path, index: int) -> Path:
    return outdir / "samples" / f"batch_{index:06d}.npz"


def sample_captions(prompts: list[str], num_samples: int) -> list[str]:
    """The caption of each sample of a text row: sample i is drawn from ``prompts[i % len(prompts)]``."""
    return [prompts[i % len(prompts)] for i in range(num_samples)]


def write_captions(captions: list[str], path: Path) -> Path:
    """One caption a line (newlines inside a caption become spaces), atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(c.replace("\n", " ") + "\n" for c in captions), encoding="utf-8")
    return path


def conditioning_for(model: torch.nn.Module, row: dict[str, Any], start: int, n: int,
                     prompts: list[str] | None) -> tuple[Any, Any]:
    """(conditioning, unconditional conditioning) of samples start .. start + n - 1 of the row."""
    kind = row["kind"]
    if kind == "unconditional":
        return None, None
    scale = row.get("guidance", {}).get("scale", 1.0)
    device = next(model.parameters()).device
    key = model.cond_stage_key
    if kind == "class":
        labels = torch.arange(start, start + n, device=device) % int(row["num_classes"])
        c = model.get_learned_conditioning({key: labels})
        uc = model.get_learned_conditioning({key: torch.full_like(labels, int(row["num_classes"]))}) if scale != 1 else None
        return c, uc
    texts = sample_captions(prompts, start + n)[start:]
    c = model.get_learned_conditioning(texts)
    uc = model.get_learned_conditioning(n * [""]) if scale != 1 else None
    return c, uc


@torch.no_grad()
def sample_row(model: torch.nn.Module, row: dict[str, Any], outdir: Path, num_samples: int, batch_size: int,
               seed: int, prompts: list[str] | None = None, progress: bool = True) -> list[Path]:
    """Draw the row's samples into ``outdir/samples``, skipping batches already there; returns the batch files."""
    sampler = row.get("sampler", {})
    eta = float(sampler.get("eta", 0.0))
    name = check_run_options(sampler.get("name", "ddim"), eta)
    batches = plan_batches(num_samples, batch_size)
    paths = [batch_path(outdir, b.index) for b in batches]
    todo = [b for b, p in zip(batches, paths) if not p.is_file()]
    if len(todo) < len(batches):
        logger.info("resuming: %d of %d batches already sampled in %s", len(batches) - len(todo), len(paths),
                    outdir / "samples")
    with model.ema_scope("reproduction sampling"):
        for out in generate(model, name, sampler.get("steps"), todo, eta=eta, seed=seed,
                            conditioning=lambda b: conditioning_for(model, row, b.start, b.size, prompts),
                            scale=float(row.get("guidance", {}).get("scale", 1.0)),
                            desc=f"sampling {row['name']}", progress=progress):
            save_npz(paths[out.batch.index], out.uint8())
    return paths


def gather_samples(paths: list[Path], into: Path) -> Path:
    """All batches as one ``.npz`` (arr_0), the layout scripts/evaluate.py reads."""
    arrays = []
    for p in paths:
        with np.load(p, allow_pickle=False) as data:
            arrays.append(data["arr_0"])
    return save_npz(into, np.concatenate(arrays))


def row_paths(row: dict[str, Any], config: str | None, ckpt: str | None) -> tuple[str, str]:
    """Config and checkpoint of a row (overridable), resolved inside the repository."""
    return resolve_path(config or row["config"]), resolve_path(ckpt or row["checkpoint"])


def published_figures(row: dict[str, Any]) -> dict[str, Any]:
    return dict(row.get("published") or {})
