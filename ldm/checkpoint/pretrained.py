"""Hugging Face folders (tokenizers, CLIP, DINOv2): the project's door to transformers' own reader.

A model or tokenizer saved with ``save_pretrained`` is a folder (configuration, vocabulary, weights possibly
sharded) whose format transformers owns, so the project does not parse it: `load_pretrained` finds a complete
local folder (the given one, or the repository's snapshot in the Hugging Face cache), refuses to reach the
network (``local_files_only``), and names the missing files, where it looked and how to get them.
Every ``from_pretrained`` of the project goes through it; checkpoint files go through `load_checkpoint`.
"""
from __future__ import annotations

import os
from typing import Any, Sequence


class MissingPretrainedFiles(FileNotFoundError):
    """Pretrained files (tokenizer vocabulary, CLIP weights) that are neither in the given folder nor in the cache."""


def hf_cache_dir() -> str:
    """The Hugging Face hub cache folder (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, or ~/.cache/huggingface/hub)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


def describe_files(groups: Sequence[Sequence[str]]) -> str:
    """``groups`` of file names in words: "a + b or c"."""
    return " or ".join(" + ".join(g) for g in groups)


def find_local_files(name_or_path: str, groups: Sequence[Sequence[str]]) -> str | None:
    """The folder that holds one complete group of ``groups``: ``name_or_path`` itself when it is a folder,
    else the repository's snapshot in the Hugging Face cache; None when no group is complete."""
    if os.path.isdir(name_or_path):
        for group in groups:
            if all(os.path.isfile(os.path.join(name_or_path, f)) for f in group):
                return name_or_path
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    for group in groups:
        try:
            found = [try_to_load_from_cache(name_or_path, f) for f in group]
        except ValueError:  # not a valid repository id
            return None
        if all(isinstance(f, str) for f in found):
            folders = {os.path.dirname(f) for f in found}
            if len(folders) == 1:
                return folders.pop()
    return None


def load_pretrained(loader: Any, name_or_path: str, what: str, groups: Sequence[Sequence[str]],
                    download_hint: str) -> Any:
    """``loader.from_pretrained`` on local files only, or ``MissingPretrainedFiles`` naming the missing files,
    where they were looked for and how to get them.

    The files are checked first: recent transformers versions build an empty tokenizer instead of failing.
    """
    folder = find_local_files(name_or_path, groups)
    if folder is None:
        where = (f"the folder {name_or_path!r}" if os.path.isdir(name_or_path) else
                 f"the Hugging Face cache {hf_cache_dir()!r} (repository {name_or_path!r}; set HF_HOME or "
                 f"HF_HUB_CACHE to use another cache), and no folder of that name exists")
        raise MissingPretrainedFiles(
            f"{what}: missing {describe_files(groups)}; looked in {where}. Nothing is downloaded at run time. "
            f"To get the files, run once on a machine with network access: {download_hint} "
            f"(or save them with save_pretrained into a folder and pass that folder instead)."
        )
    try:
        return loader.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise MissingPretrainedFiles(f"{what}: the files in {folder!r} cannot be loaded ({err}); "
                                     f"get them again with: {download_hint}") from err
