"""How to get a model-zoo file that is missing: the one download hint of the project.

The model zoo lives in ``models/<folder>/<name>/`` (``model.ckpt`` beside ``config.yaml``); each folder is
filled by one download script, which takes the model's name. Nothing here imports torch, so that the
scripts can check their arguments before loading it.
"""
from __future__ import annotations

import os
from pathlib import Path

#: The script that downloads the models of each folder under ``models/``, by folder.
DOWNLOAD_SCRIPTS = {
    "ldm": "scripts/download_models.sh",
    "rdm": "scripts/download_models.sh",
    "first_stage_models": "scripts/download_first_stages.sh",
}


def download_hint(path: str | os.PathLike) -> str:
    """How to get the model-zoo file at ``path``: for ``models/<folder>/<name>/<file>``, the download script of
    that folder with the model's name; for a file directly in a model-zoo folder, the script and how to list
    its names; "" for any other path."""
    parts = Path(os.path.abspath(path)).parts
    starts = [i + 1 for i in range(len(parts) - 1) if parts[i] == "models" and parts[i + 1] in DOWNLOAD_SCRIPTS]
    if not starts:
        return ""
    folder, rest = parts[starts[-1]], parts[starts[-1] + 1:]
    script = DOWNLOAD_SCRIPTS[folder]
    if len(rest) >= 2:
        return f"Fetch it with `bash {script} {rest[0]}`."
    return (f"Model-zoo files go into models/{folder}/<name>/; fetch one with `bash {script} <name>` "
            f"(`bash {script} --list` names them).")
