"""The one loading function of the project, `load_checkpoint`, and what is built on it.

Every weight file the project reads (model-zoo and training checkpoints, ``--resume``, a model's
``ckpt_path``, the scripts' models, the LPIPS and Inception weights, the demo classifier) goes through
`load_checkpoint`, which never runs code from the file: the format is read from the content; safetensors
files load through ``safetensors.torch.load_file``; torch files are unpickled by the restricted unpickler
(`ldm.checkpoint.unpickler`), with Lightning/omegaconf/argparse objects as inert stand-ins. What a file may
allocate is bounded by its size: storages may not claim more bytes than the file holds, tensors may not
reach outside their storage or repeat it, and the loaded object graph, walked as a tree, may not expand
beyond a small multiple of the file.

Built on it: `extract_state_dict` and `load_state_dict` (the weights of a Lightning checkpoint, a bare
state dict or a safetensors file), `check_weights_fit` and `restore_weights` (the models' ``init_from_ckpt``).
"""
from __future__ import annotations

import collections
import io
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ldm.checkpoint.errors import InvalidCheckpointError, UnsafeCheckpointError
from ldm.checkpoint.formats import SAFETENSORS_SUFFIX, _check_file, _hint, _sniff_format, _zip_contents
from ldm.checkpoint.standins import StandIn
from ldm.checkpoint.unpickler import restricted_pickle_module

logger = logging.getLogger(__name__)


def _safetensors_device(map_location: Any) -> str:
    if map_location is None:
        return "cpu"
    if isinstance(map_location, (str, torch.device)):
        return str(map_location)
    if callable(map_location):  # Lightning's identity map (lambda storage, loc: storage)
        return "cpu"
    raise TypeError(f"map_location for a .safetensors file must be a device string or torch.device; "
                    f"got {type(map_location).__name__}")


def _load_safetensors(path: Path, map_location: Any) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    device = _safetensors_device(map_location)
    try:
        return load_file(str(path), device=device)
    except Exception as err:  # safetensors raises its own SafetensorError for bad headers / short files
        raise InvalidCheckpointError(
            f"could not read {path} as a safetensors file ({type(err).__name__}: {err}); it may be "
            f"truncated or corrupt.{_hint(path)}") from err


#: Objects that a loaded checkpoint may reach, counting shared references each time they are reached, beyond
#: the bound of `_max_expansion`. A model's checkpoint is a tree of a few thousand containers.
_EXPANSION_BASE = 10_000
#: Deepest nesting of containers a checkpoint may have (a state dict is three levels deep).
_MAX_DEPTH = 200


def _max_expansion(file_size: int) -> int:
    return _EXPANSION_BASE + file_size // 4


def _children(node: Any) -> Any:
    """The objects a container refers to, or None for a leaf (tensors and arrays are leaves)."""
    if isinstance(node, dict):
        extra = node.__dict__.values() if isinstance(node, (StandIn, collections.OrderedDict)) else ()
        return [*node.keys(), *node.values(), *extra]
    if isinstance(node, (list, tuple, set, frozenset)):
        return node
    if isinstance(node, np.ndarray) and node.dtype.hasobject:
        return list(node.flat)
    return None


def _check_expansion(obj: Any, file_size: int, source: str) -> None:
    """Refuse a checkpoint whose object graph, walked as a tree (as printing, copying or converting it does),
    is far larger than the file: a few KB of shared references can stand for 2**40 objects.

    Shared references are counted each time they are reached; a reference back to an object on the current
    path (omegaconf's ``_parent`` links) is a leaf.
    """
    budget = _max_expansion(file_size)
    visited = 1
    on_path: set[int] = set()
    stack: list[tuple[Any, int]] = [(obj, 0)]  # depth < 0 marks leaving a node
    while stack:
        node, depth = stack.pop()
        if depth < 0:
            on_path.discard(id(node))
            continue
        children = _children(node)
        if not children or id(node) in on_path:
            continue
        if depth >= _MAX_DEPTH:
            raise InvalidCheckpointError(f"{source}: objects nested more than {_MAX_DEPTH} deep; the file is "
                                         f"corrupt or crafted")
        visited += len(children)
        if visited > budget:
            raise InvalidCheckpointError(
                f"{source}: its shared references expand to more than {budget:,} objects, out of proportion to "
                f"its {file_size:,} bytes; the file is corrupt or crafted")
        on_path.add(id(node))
        stack.append((node, -1))
        stack.extend((child, depth + 1) for child in children)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """Load a whole checkpoint without running code from it.

    The format is read from the file's content, not its name: safetensors files give their dict of tensors;
    torch files (zip or legacy format) are unpickled against the allow-list, with Lightning/omegaconf/argparse
    objects as `StandIn` objects. What a file may allocate is bounded by its size: storages may not claim more
    bytes than the file has, tensors may not repeat their storage, and shared references may not expand
    beyond a small multiple of the file. Raises FileNotFoundError (with the download script for model-zoo
    paths), IsADirectoryError, InvalidCheckpointError for unreadable or special files and
    UnsafeCheckpointError for a file that names a forbidden global or call.

    With ``mmap`` the tensors of a zip checkpoint are not read into memory: they are views of the file
    mapped copy-on-write (``torch.load(mmap=True)``), paged in from the page cache as they are used, and
    each storage must claim exactly the bytes of its record in the file. Writing to them never changes the
    file; the file must not be truncated while they are in use (save over it through a new file and a
    rename, as `save_checkpoint_atomic` does). Other formats, and zip files with compressed records, are
    read as without ``mmap``.
    """
    path = Path(path)
    size = _check_file(path)
    kind = _sniff_format(path, size)
    if kind == "safetensors":
        return _load_safetensors(path, map_location)
    if kind == "tar":
        raise InvalidCheckpointError(f"{path} is a tar archive (the pre-0.4 PyTorch format), which is not supported")
    source = str(path)
    try:
        if kind == "zip":
            torchscript, records = _zip_contents(path, size)
            if torchscript:
                raise UnsafeCheckpointError("TorchScript archive", source,
                                            "TorchScript archives carry code; load them with torch.jit.load if trusted")
            # torch.load maps only a path, and judges a path by its suffix: a file object otherwise
            if mmap and records is not None and not str(path).endswith(SAFETENSORS_SUFFIX):
                obj = torch.load(os.fspath(path), map_location=map_location, weights_only=False, mmap=True,
                                 pickle_module=restricted_pickle_module(source, max_storage_bytes=size,
                                                                        storage_records=records))
            else:
                with open(path, "rb") as file:
                    obj = torch.load(file, map_location=map_location, weights_only=False,
                                     pickle_module=restricted_pickle_module(source, max_storage_bytes=size))
        else:  # the legacy format reads storages from the stream: give it the file's bytes, nothing more
            obj = torch.load(io.BytesIO(path.read_bytes()), map_location=map_location, weights_only=False,
                             pickle_module=restricted_pickle_module(source, max_storage_bytes=size))
    except (UnsafeCheckpointError, InvalidCheckpointError):
        raise
    except Exception as err:  # torch, zipfile and pickle each raise their own types for a damaged file
        raise InvalidCheckpointError(
            f"could not read checkpoint {path} ({type(err).__name__}: {err}); the file may be truncated or "
            f"corrupt, or not a PyTorch checkpoint.{_hint(path)}") from err
    _check_expansion(obj, size, source)
    return obj


def extract_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights in ``obj``, a loaded checkpoint (of the file ``path``, named in errors): its
    ``state_dict`` entry, or ``obj`` itself when it is a bare state dict. InvalidCheckpointError unless
    they map names to tensors."""
    state_dict = obj["state_dict"] if isinstance(obj, Mapping) and "state_dict" in obj else obj
    if not isinstance(state_dict, Mapping):
        raise InvalidCheckpointError(f"{path} holds a {type(state_dict).__name__}, not a state dict or a "
                                     f"Lightning checkpoint with a 'state_dict' entry")
    bad = [k for k, v in state_dict.items()
           if not isinstance(k, str) or not (isinstance(v, torch.Tensor) or k.endswith("_extra_state"))]
    if bad:
        top = sorted(map(str, obj.keys()))[:10] if isinstance(obj, Mapping) else []
        raise InvalidCheckpointError(f"{path} holds no state dict: entries {bad[:5]} are not name -> tensor "
                                     f"pairs (top-level keys: {top})")
    return state_dict


def load_state_dict(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The model weights in ``path``: a Lightning checkpoint's ``state_dict``, a bare state dict or a
    safetensors file. The mapping is returned as stored (an OrderedDict keeps its ``_metadata``)."""
    return extract_state_dict(load_checkpoint(path, map_location=map_location), path)


def check_weights_fit(module: torch.nn.Module, state_dict: Mapping[str, Any], source: str | os.PathLike) -> None:
    """Refuse, before loading, weights that cannot belong to ``module``: a state dict sharing none of its
    keys (a different model's checkpoint would otherwise leave it randomly initialised, with only a log
    line) or holding tensors of the wrong shape. Missing or extra keys alone are allowed (``strict=False``
    loading of partial checkpoints, e.g. a first stage without its loss). Raises InvalidCheckpointError."""
    own = module.state_dict()
    name = type(module).__name__
    shared = [k for k in state_dict if k in own]
    if own and state_dict and not shared:
        raise InvalidCheckpointError(
            f"{source} holds no weights of this {name}: none of its {len(state_dict)} keys (such as "
            f"{sorted(state_dict)[:3]}) is a key of the model (such as {sorted(own)[:3]}); is it the checkpoint "
            f"of a different model?")
    wrong = [(k, tuple(state_dict[k].shape), tuple(own[k].shape)) for k in shared
             if isinstance(state_dict[k], torch.Tensor) and isinstance(own[k], torch.Tensor)
             and state_dict[k].shape != own[k].shape]
    if wrong:
        key, theirs, ours = wrong[0]
        raise InvalidCheckpointError(
            f"{source} does not fit this {name}: {len(wrong)} of its tensors have the wrong shape, such as "
            f"{key!r}: {theirs} in the file, {ours} in the model; is it the checkpoint of a different config?")


def restore_weights(module: torch.nn.Module, path: str | os.PathLike, ignore_keys: Sequence[str] | None = None,
                    log: Callable[..., None] = logger.info) -> None:
    """Load the weights in ``path`` into ``module`` non-strictly, as the models' ``init_from_ckpt`` do: keys
    that start with a prefix in ``ignore_keys`` are dropped, weights that cannot belong to the module are
    refused (`check_weights_fit`), and the missing and unexpected keys are reported through ``log``."""
    state_dict = load_state_dict(path)
    prefixes = tuple(ignore_keys or ())
    for key in [k for k in state_dict if prefixes and k.startswith(prefixes)]:
        log("Deleting key %s from state_dict.", key)
        del state_dict[key]
    check_weights_fit(module, state_dict, path)
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    log("Restored from %s with %d missing and %d unexpected keys", path, len(missing), len(unexpected))
    if missing:
        log("Missing Keys: %s", missing)
    if unexpected:
        log("Unexpected Keys: %s", unexpected)
