"""Atomic saving: a file is written to a temporary file beside it, fsynced and renamed into place, so that
it holds either its old content or the complete new file, never a part (`atomic_path`,
`save_checkpoint_atomic`, `atomic_write_bytes`).

The temporary files are named here and recognised here only: ``.<name>.<pid>.<8 hex digits>.tmp``
(`temp_path`, `temp_file_owner`), so that `remove_stale_temp_files` can remove those that killed writes
left behind while those of live processes stay. `convert_to_safetensors` writes a checkpoint's weights
to a ``.safetensors`` file.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import torch

from ldm.checkpoint.formats import SAFETENSORS_SUFFIX
from ldm.checkpoint.state_dicts import extract_state_dict, load_checkpoint

logger = logging.getLogger(__name__)

#: A temporary file's name is ``TEMP_PREFIX + <name> + "." + <pid> + "." + <token> + TEMP_SUFFIX``.
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"
#: Random bytes in a temporary file's name (written as twice as many hex digits).
_TOKEN_BYTES = 4


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary path beside ``path``, for this process to write and then rename to ``path``."""
    path = Path(path)
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(_TOKEN_BYTES)}{TEMP_SUFFIX}")


def temp_file_owner(path: str | os.PathLike) -> int | None:
    """The id of the process that wrote the temporary file ``path`` (named by `temp_path`), or None when
    ``path`` is not named like one."""
    name = Path(path).name
    if not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)):
        return None
    parts = name[len(TEMP_PREFIX):-len(TEMP_SUFFIX)].rsplit(".", 2)
    if len(parts) != 3 or not parts[0]:
        return None
    _, pid, token = parts
    is_token = len(token) == 2 * _TOKEN_BYTES and all(c in "0123456789abcdef" for c in token)
    return int(pid) if pid.isascii() and pid.isdigit() and is_token else None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block has written it, fsync it and rename it to
    ``path``. ``path`` therefore holds either its old content or the complete new file, never a part;
    if the block raises, the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not every platform can open a folder
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed atomic writes left in ``folder`` (those of live processes stay)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        pid = temp_file_owner(path)
        if pid is not None and path.is_file() and not _pid_alive(pid):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info("Removed %d temporary file(s) left by interrupted saves in %s: %s", len(removed), folder,
                    ", ".join(p.name for p in removed))
    return removed


def _prepare_for_safetensors(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Contiguous tensors that share no memory (safetensors refuses both), cloning only where needed."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TypeError(f"safetensors stores str -> tensor pairs only; entry {key!r} holds a "
                            f"{type(value).__name__}")
        tensor = value.detach()
        ptr = tensor.untyped_storage().data_ptr()
        if not tensor.is_contiguous() or ptr in seen or ptr == 0:
            tensor = tensor.contiguous().clone()
        else:
            seen.add(ptr)
        out[key] = tensor
    return out


def save_checkpoint_atomic(obj: Any, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Save ``obj`` so that ``path`` holds either its old content or the complete new file, never a part.

    A ``.safetensors`` path takes a dict of tensors (``metadata``: optional str -> str header entries);
    any other path is written with ``torch.save``. The data goes to a temporary file in the same
    folder, is fsynced, and replaces ``path`` with ``os.replace``.
    """
    path = Path(path)
    is_safetensors = path.suffix == SAFETENSORS_SUFFIX
    if metadata is not None and not is_safetensors:
        raise ValueError(f"metadata is only stored in .safetensors files; got the path {path}")
    with atomic_path(path) as tmp:
        if is_safetensors:
            from safetensors.torch import save_file

            if not isinstance(obj, Mapping):
                raise TypeError(f"a .safetensors file holds a dict of tensors; got {type(obj).__name__}")
            save_file(_prepare_for_safetensors(obj), str(tmp),
                      metadata=dict(metadata) if metadata is not None else None)
        else:
            torch.save(obj, tmp)
    return path


def convert_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the weights of checkpoint ``src`` to ``dst`` (.safetensors), with step/epoch as metadata."""
    dst = Path(dst)
    if dst.suffix != SAFETENSORS_SUFFIX:
        raise ValueError(f"the output must end in {SAFETENSORS_SUFFIX}; got {dst}")
    obj = load_checkpoint(src)
    full = extract_state_dict(obj, src)
    state_dict = {k: v for k, v in full.items() if isinstance(v, torch.Tensor)}
    dropped = sorted(set(full) - set(state_dict))
    if dropped:
        logger.warning("%s: entries that are not tensors cannot go into safetensors and were left out: %s",
                       src, dropped)
    metadata = {"format": "pt", "converted_from": Path(src).name}
    if isinstance(obj, Mapping):
        for key in ("global_step", "epoch", "pytorch-lightning_version"):
            if isinstance(obj.get(key), (int, str)):
                metadata[key] = str(obj[key])
    return save_checkpoint_atomic(state_dict, dst, metadata=metadata)
