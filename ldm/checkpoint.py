"""Safe loading and atomic saving of model-zoo checkpoints.

The checkpoints released with "High-Resolution Image Synthesis with Latent Diffusion Models"
(Rombach et al., CVPR 2022) are pytorch-lightning 1.x pickles. Beside ``state_dict`` they hold
``epoch``, ``global_step``, optimizer and scheduler states, ``hparams``/``hyper_parameters`` (possibly
omegaconf ``DictConfig`` or ``argparse.Namespace`` objects) and ``callbacks`` keyed by Lightning
classes. A pickle can run any code while it loads, so `load_checkpoint` never lets the file name an
arbitrary global:

* every global the pickle refers to is looked up in a fixed allow-list (torch's tensor and storage
  rebuild functions, dtypes, ``collections.OrderedDict``, builtin containers and scalars, numpy
  array/scalar/dtype reconstruction, ``datetime`` and ``pathlib`` values); nothing is imported;
* classes of pytorch_lightning / lightning / omegaconf / argparse / typing resolve to inert
  `StandIn` objects that only record what the pickle stored, so the loader works whichever
  Lightning version (if any) is installed;
* anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ``functools.partial``, ...)
  raises `UnsafeCheckpointError` naming the global, the file and the reason, before it is called;
* the opcodes that call or mutate objects (REDUCE, NEWOBJ, INST/OBJ, BUILD, SETITEM, APPEND) are
  re-checked: only allow-listed callables run, each with a check of its arguments (``bytes(10**12)``,
  ``list(range(...))`` or a preallocating numpy ``_reconstruct`` are refused), and state is only set on
  stand-ins and arrays (never attributes that would shadow a container's methods);
* what a file may allocate is bounded by its size: tensor storages may not claim more bytes than the
  file holds, tensors may not reach outside their storage or repeat it (stride 0), and the loaded object
  graph, walked as a tree, may not expand beyond a small multiple of the file (shared references);
* the format is read from the content (zip, legacy pickle, safetensors), whatever the file's name, and
  directories, FIFOs, devices and sockets are named for what they are, never opened.

``.safetensors`` files load through ``safetensors.torch.load_file``. `save_checkpoint_atomic` writes
through a temporary file, fsync and a rename. ``python -m ldm.checkpoint convert in.ckpt
out.safetensors`` converts a checkpoint's weights.
"""
from __future__ import annotations

import argparse
import _compat_pickle
import collections
import copyreg
import datetime
import io
import logging
import os
import pathlib
import pickle
import stat
import sys
import tarfile
import types
import zipfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch

from ldm.util import atomic_path

logger = logging.getLogger(__name__)

#: Top-level modules whose classes load as inert `StandIn` objects instead of being imported.
STAND_IN_MODULES = ("pytorch_lightning", "lightning", "lightning_fabric", "lightning_utilities",
                    "omegaconf", "argparse", "typing")

#: Where the model zoo's checkpoints come from, by folder under ``models/``.
DOWNLOAD_SCRIPTS = {
    "ldm": "scripts/download_models.sh",
    "first_stage_models": "scripts/download_first_stages.sh",
}

_SAFETENSORS_SUFFIX = ".safetensors"


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint referred to a global outside the allow-list; nothing from it was executed."""

    def __init__(self, global_name: str, source: str, reason: str):
        self.global_name = global_name  # "module.name" of the refused global
        self.source = source  # the file being loaded
        self.reason = reason  # why it was refused
        super().__init__(
            f"refused to load '{global_name}' from checkpoint {source}: {reason}. Nothing from the file was "
            f"executed. Checkpoints may only hold tensors, containers, numbers, strings, numpy arrays and "
            f"Lightning/omegaconf/argparse objects (loaded as inert stand-ins)."
        )


class InvalidCheckpointError(RuntimeError):
    """A file that exists but cannot be read as a checkpoint (empty, truncated, corrupt, wrong format)."""


# --------------------------------------------------------------------------------------------------
# Stand-ins for classes that are never imported
# --------------------------------------------------------------------------------------------------


class _StandInMeta(type):
    """Metaclass of the stand-in classes: a repr that says what they are."""

    def __repr__(cls) -> str:
        return f"<stand-in class {cls._stand_in_for}>"


class StandIn(dict, metaclass=_StandInMeta):
    """Inert placeholder for an instance of a class the loader does not import.

    It records what the pickle stored and runs nothing: dict items (Lightning's ``AttributeDict``)
    stay dict items and are readable as attributes, the state set by BUILD becomes attributes
    (``argparse.Namespace``, ``DictConfig``'s ``_content``), constructor arguments are kept in
    ``_stand_in_args``/``_stand_in_kwargs``, list items in ``_stand_in_items``.
    """

    _stand_in_for: ClassVar[str] = "StandIn"

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        self = super().__new__(cls)
        if args:
            self.__dict__["_stand_in_args"] = args
        if kwargs:
            self.__dict__["_stand_in_kwargs"] = kwargs
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Arguments were recorded by ``__new__``; no constructor of the original class runs."""

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("__") and name in self:
            return self[name]
        raise AttributeError(f"{self._stand_in_for} stand-in has no attribute {name!r}")

    def __setstate__(self, state: Any) -> None:
        _set_stand_in_state(self, state)

    def extend(self, items: Any) -> None:
        self.__dict__.setdefault("_stand_in_items", []).extend(items)

    def append(self, item: Any) -> None:
        self.__dict__.setdefault("_stand_in_items", []).append(item)

    def __reduce_ex__(self, protocol: Any) -> tuple:
        cls = type(self)
        return (_rebuild_stand_in, (cls.__module__, cls.__qualname__), dict(self.__dict__) or None, None,
                iter(dict.items(self)))

    def __repr__(self) -> str:
        parts = []
        if dict.__len__(self):
            parts.append(f"items={dict.__repr__(self)}")
        if self.__dict__:
            parts.append(f"attrs={self.__dict__!r}")
        return f"<stand-in {self._stand_in_for}{': ' + ', '.join(parts) if parts else ''}>"

    # Identity semantics: stand-ins can hold cycles (omegaconf's _parent links); compare `to_builtin` results.
    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__


def _set_stand_in_state(obj: StandIn, state: Any) -> None:
    """What BUILD does to a stand-in: attributes from a ``__dict__``-like state, anything else kept as is."""
    if (isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict))
            and isinstance(state[1], dict)):  # (__dict__, __slots__) state
        state = {**(state[0] or {}), **state[1]}
    if isinstance(state, dict) and all(isinstance(k, str) for k in state):
        special = [k for k in state if k.startswith("__") and k.endswith("__")]
        if special:
            raise ValueError(f"the state of a {obj._stand_in_for} stand-in may not set special attributes; "
                             f"got {special}")
        shadowing = sorted(k for k in state if k in _STAND_IN_RESERVED or k.startswith("_stand_in_"))
        if shadowing:
            raise ValueError(f"the state of a {obj._stand_in_for} stand-in may not set attributes that shadow "
                             f"its methods; got {shadowing}")
        obj.__dict__.update(state)
    else:
        obj.__dict__["_stand_in_state"] = state


_STAND_IN_CLASSES: dict[tuple[str, str], type] = {}


def stand_in_class(module: str, qualname: str) -> type:
    """The (cached) inert class that stands in for ``module.qualname``."""
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(f"stand-in names must be strings; got {module!r}, {qualname!r}")
    key = (module, qualname)
    cls = _STAND_IN_CLASSES.get(key)
    if cls is None:
        cls = _StandInMeta(qualname.rsplit(".", 1)[-1], (StandIn,), {
            "__module__": module, "__qualname__": qualname, "_stand_in_for": f"{module}.{qualname}",
        })
        cls = _STAND_IN_CLASSES.setdefault(key, cls)
    return cls


def _rebuild_stand_in(module: str, qualname: str) -> StandIn:
    """An empty stand-in instance; used when a loaded checkpoint holding stand-ins is saved again."""
    return stand_in_class(module, qualname)()


def is_stand_in(obj: Any) -> bool:
    """Whether ``obj`` is a stand-in instance or class produced by `load_checkpoint`."""
    return isinstance(obj, (StandIn, _StandInMeta))


def to_builtin(obj: Any) -> Any:
    """``obj`` with stand-ins replaced by plain Python values, for reading hyper-parameters.

    omegaconf ``DictConfig``/``ListConfig`` become dicts/lists of their values (interpolations stay
    strings such as ``"${x}"``); other stand-ins (``Namespace``, ``AttributeDict``, ...) become a dict of
    their items and attributes.
    """
    if isinstance(obj, StandIn):
        attrs = {k: v for k, v in obj.__dict__.items() if not k.startswith("_stand_in_")}
        if type(obj).__module__.split(".")[0] == "omegaconf":
            if "_content" in attrs:
                return to_builtin(attrs["_content"])
            if "_val" in attrs:
                return to_builtin(attrs["_val"])
        return {**{k: to_builtin(v) for k, v in dict.items(obj)}, **{k: to_builtin(v) for k, v in attrs.items()}}
    if isinstance(obj, Mapping):
        return {k: to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(to_builtin(v) for v in obj)
    return obj


# A stand-in class pickles as a call to `stand_in_class`, so a loaded checkpoint can be saved again.
copyreg.pickle(_StandInMeta, lambda cls: (stand_in_class, (cls.__module__, cls.__qualname__)))


# --------------------------------------------------------------------------------------------------
# The allow-list
# --------------------------------------------------------------------------------------------------


class _PolicyViolation(Exception):
    """A call that the allow-list permits in principle, with arguments it does not (raised before the call)."""


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles use to rebuild ``bytes``."""
    if not isinstance(obj, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1",
                                                                                               "iso88591"):
        raise pickle.UnpicklingError(
            f"_codecs.encode is only allowed on a str with the latin1 codec; got {type(obj).__name__}, "
            f"{encoding!r}")
    return obj.encode("latin-1", errors="strict")


_BUILTINS = {t.__name__: t for t in (set, frozenset, list, dict, tuple, bytearray, bytes, complex, int, float,
                                      bool, str, slice, range, object)}

#: Containers whose contents already lie in the file: copying one allocates no more than the file holds.
_MATERIALISED = (list, tuple, dict, set, frozenset, str, bytes, bytearray)
_SCALARS = (bool, int, float, complex, str, bytes, type(None))
#: Longest str/bytes argument a scalar constructor (``int("...")``) may convert.
_MAX_SCALAR_TEXT = 10_000
#: Largest element count of the array that numpy's ``_reconstruct`` preallocates (numpy pickles use 0).
_MAX_RECONSTRUCT_ELEMENTS = 1


def _no_args(args: tuple, kwargs: dict) -> None:
    if args or kwargs:
        raise _PolicyViolation("takes no arguments")


def _container_args(args: tuple, kwargs: dict) -> None:
    """``list(x)``, ``dict(x)``, ...: only a copy of a container that the file itself holds."""
    if len(args) > 1:
        raise _PolicyViolation(f"takes at most one argument; got {len(args)}")
    if args and not isinstance(args[0], _MATERIALISED):
        raise _PolicyViolation(f"may only copy a list, tuple, dict, set, str or bytes held in the file; got a "
                               f"{type(args[0]).__name__} (which could expand to any size)")


def _bytes_args(args: tuple, kwargs: dict) -> None:
    """``bytes(x)``/``bytearray(x)``: never from a count (``bytes(10**12)`` would allocate a terabyte)."""
    if kwargs or len(args) > 3 or (args and not isinstance(args[0], (bytes, bytearray, str, list, tuple))) or \
            any(not isinstance(a, str) for a in args[1:]):
        raise _PolicyViolation("takes bytes, a str with an encoding, or a list of byte values; not a count")


def _scalar_args(args: tuple, kwargs: dict) -> None:
    for value in (*args, *kwargs.values()):
        if not isinstance(value, _SCALARS):
            raise _PolicyViolation(f"takes numbers and short strings only; got a {type(value).__name__}")
        if isinstance(value, (str, bytes)) and len(value) > _MAX_SCALAR_TEXT:
            raise _PolicyViolation(f"takes strings of at most {_MAX_SCALAR_TEXT} characters; got {len(value)}")


def _int_args(args: tuple, kwargs: dict) -> None:
    if kwargs or any(not (a is None or type(a) is int) for a in args):
        raise _PolicyViolation("takes integers only")


def _str_args(args: tuple, kwargs: dict) -> None:
    if kwargs or any(not isinstance(a, str) for a in args):
        raise _PolicyViolation("takes strings only")


def _datetime_args(args: tuple, kwargs: dict) -> None:
    for value in (*args, *kwargs.values()):
        if not isinstance(value, (*_SCALARS, datetime.tzinfo, datetime.timedelta)):
            raise _PolicyViolation(f"takes numbers, bytes and time zones only; got a {type(value).__name__}")


_DEFAULTDICT_FACTORIES = (list, dict, set, int, float, str, tuple, collections.OrderedDict)


def _defaultdict_args(args: tuple, kwargs: dict) -> None:
    if kwargs or len(args) > 2 or (args and args[0] is not None and args[0] not in _DEFAULTDICT_FACTORIES):
        raise _PolicyViolation("takes a default factory among list, dict, set, int, float, str, tuple, "
                               "OrderedDict (or None) and optionally a dict")
    if len(args) == 2:
        _container_args(args[1:], {})


def _size_args(args: tuple, kwargs: dict) -> None:
    if kwargs or len(args) > 1 or (args and not (isinstance(args[0], (list, tuple))
                                                 and all(type(v) is int for v in args[0]))):
        raise _PolicyViolation("takes one list of integers")


def _parameter_args(args: tuple, kwargs: dict) -> None:
    if kwargs or not 1 <= len(args) <= 2 or not isinstance(args[0], torch.Tensor) or \
            (len(args) == 2 and not isinstance(args[1], bool)):
        raise _PolicyViolation("takes a tensor and requires_grad")


def _element_count(size: Any) -> int:
    if not isinstance(size, (list, tuple)) or any(type(s) is not int or s < 0 for s in size):
        raise _PolicyViolation(f"a shape must be a tuple of non-negative integers; got {size!r}")
    count = 1
    for s in size:
        count *= s
    return count


def _check_tensor_view(storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None = None) -> None:
    """A tensor rebuilt from ``storage`` must lie inside it and may not repeat its memory (stride 0).

    A view is not an allocation, but the first ``.contiguous()``/``.clone()`` of a 2**38-element view of a
    4-byte storage is, so such views are refused here, where the file's own size bounds what it may make.
    """
    numel = _element_count(size)
    if not isinstance(stride, (list, tuple)) or len(stride) != len(size) or \
            any(type(s) is not int or s < 0 for s in stride):
        raise _PolicyViolation(f"tensor strides must be {len(size)} non-negative integers; got {stride!r}")
    if type(offset) is not int or offset < 0:
        raise _PolicyViolation(f"a tensor's storage offset must be a non-negative integer; got {offset!r}")
    if isinstance(storage, torch.storage.TypedStorage):
        available = storage._size()
    elif isinstance(storage, torch.UntypedStorage):
        available = storage.nbytes() // (dtype.itemsize if dtype is not None else 1)
    else:
        raise _PolicyViolation(f"a tensor must be rebuilt from a storage; got a {type(storage).__name__}")
    if numel == 0:
        return
    extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if extent > available:
        raise _PolicyViolation(f"a tensor of shape {tuple(size)} reaches element {extent - 1} of a storage of "
                               f"{available} elements")
    if numel > available:
        raise _PolicyViolation(f"a tensor of shape {tuple(size)} ({numel} elements) repeats the {available} "
                               f"elements of its storage (stride {tuple(stride)}); such tensors are not loaded")


def _check_hooks(hooks: Any) -> None:
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        raise _PolicyViolation("tensors may not carry backward hooks")


def _check_metadata(metadata: Any) -> None:
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, bool)
                                                                        for k, v in metadata.items())):
        raise _PolicyViolation("tensor metadata must map names to booleans")


def _rebuild_tensor_args(args: tuple, kwargs: dict) -> None:
    # _rebuild_tensor(storage, storage_offset, size, stride)
    if kwargs or len(args) != 4:
        raise _PolicyViolation("takes storage, offset, size, stride")
    _check_tensor_view(*args)


def _rebuild_tensor_v2_args(args: tuple, kwargs: dict) -> None:
    # _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None)
    if kwargs or len(args) not in (6, 7):
        raise _PolicyViolation("takes storage, offset, size, stride, requires_grad, hooks[, metadata]")
    _check_tensor_view(*args[:4])
    _check_hooks(args[5])
    _check_metadata(args[6] if len(args) == 7 else None)


def _rebuild_tensor_v3_args(args: tuple, kwargs: dict) -> None:
    # _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None)
    if kwargs or len(args) not in (7, 8) or not isinstance(args[6], torch.dtype):
        raise _PolicyViolation("takes storage, offset, size, stride, requires_grad, hooks, dtype[, metadata]")
    _check_tensor_view(*args[:4], dtype=args[6])
    _check_hooks(args[5])
    _check_metadata(args[7] if len(args) == 8 else None)


def _rebuild_parameter_args(args: tuple, kwargs: dict) -> None:
    # _rebuild_parameter(data, requires_grad, backward_hooks)
    if kwargs or len(args) != 3 or not isinstance(args[0], torch.Tensor):
        raise _PolicyViolation("takes data, requires_grad, hooks")
    _check_hooks(args[2])


def _rebuild_parameter_with_state_args(args: tuple, kwargs: dict) -> None:
    # _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state): the state would set attributes
    _rebuild_parameter_args(args[:3], kwargs)
    if len(args) != 4 or args[3]:
        raise _PolicyViolation("parameters with extra attribute state are not loaded")


def _device_tensor_args(args: tuple, kwargs: dict) -> None:
    # _rebuild_device_tensor_from_{numpy,cpu_tensor}(data, dtype, device, requires_grad)
    if kwargs or len(args) != 4 or not isinstance(args[0], (np.ndarray, torch.Tensor)) or \
            not isinstance(args[1], torch.dtype) or not isinstance(args[2], str):
        raise _PolicyViolation("takes data, dtype, device, requires_grad")
    if isinstance(args[0], np.ndarray) and args[0].dtype.hasobject:
        raise _PolicyViolation("takes a numeric array")


def _reconstruct_args(args: tuple, kwargs: dict) -> None:
    # numpy's _reconstruct(subtype, shape, dtype) preallocates `shape`; BUILD then fills in the file's data
    if kwargs or len(args) != 3 or args[0] is not np.ndarray or not isinstance(args[2], (bytes, str)):
        raise _PolicyViolation("takes numpy.ndarray, a shape and a dtype code")
    if _element_count(args[1]) > _MAX_RECONSTRUCT_ELEMENTS:
        raise _PolicyViolation(f"may only preallocate an empty array; got the shape {args[1]!r}")


def _numpy_scalar_args(args: tuple, kwargs: dict) -> None:
    if kwargs or not 1 <= len(args) <= 2 or not isinstance(args[0], np.dtype):
        raise _PolicyViolation("takes a dtype and its bytes")
    if len(args) == 2 and not args[0].hasobject and not (isinstance(args[1], bytes)
                                                         and len(args[1]) == args[0].itemsize):
        raise _PolicyViolation(f"takes {args[0].itemsize} bytes for a {args[0]} scalar")


def _frombuffer_args(args: tuple, kwargs: dict) -> None:
    # numpy's _frombuffer(buffer, dtype, shape, order): a view of bytes held in the file
    if kwargs or len(args) != 4 or not isinstance(args[0], (bytes, bytearray, pickle.PickleBuffer)) or \
            not isinstance(args[1], np.dtype) or args[1].hasobject:
        raise _PolicyViolation("takes bytes, a numeric dtype, a shape and an order")
    if _element_count(args[2]) * args[1].itemsize != memoryview(args[0]).nbytes:
        raise _PolicyViolation(f"the shape {args[2]!r} does not match the {memoryview(args[0]).nbytes} bytes given")


def _dtype_args(args: tuple, kwargs: dict) -> None:
    if kwargs or any(not isinstance(a, (str, bool, int)) for a in args):
        raise _PolicyViolation("takes a dtype code and flags")


def _stand_in_name_args(args: tuple, kwargs: dict) -> None:
    _str_args(args, kwargs)
    if len(args) != 2:
        raise _PolicyViolation("takes a module and a class name")


def _rebuild_from_type_v2(func: Any, new_type: Any, args: tuple, state: Any) -> torch.Tensor:
    """torch's ``_tensor._rebuild_from_type_v2`` under the allow-list: ``func`` must be an allow-listed tensor
    rebuild function (called with its own argument checks), ``new_type`` a plain Tensor or Parameter, and no
    attribute state is set on the result."""
    policies = _call_policies()  # fills _TENSOR_REBUILDERS
    if func not in _TENSOR_REBUILDERS:
        raise _PolicyViolation(f"may only call torch's tensor rebuild functions; got {_name_of(func)}")
    if new_type not in (torch.Tensor, torch.nn.Parameter):
        raise _PolicyViolation(f"may only rebuild torch.Tensor or torch.nn.Parameter; got {_name_of(new_type)}")
    if state:
        raise _PolicyViolation("tensors with extra attribute state are not loaded")
    if not isinstance(args, tuple):
        raise _PolicyViolation("takes an argument tuple")
    policies[id(func)][1](args, {})
    result = func(*args)
    if type(result) is not new_type:
        result = result.as_subclass(new_type)
    return result


def _rebuild_from_type_args(args: tuple, kwargs: dict) -> None:
    if kwargs or len(args) != 4:
        raise _PolicyViolation("takes func, type, args and state")


_TENSOR_REBUILDERS: set[Any] = set()


@lru_cache(maxsize=1)
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object, for every global a checkpoint may name. Built once; imports nothing."""
    table: dict[tuple[str, str], Any] = {}
    for name, obj in _BUILTINS.items():
        table["builtins", name] = obj
    table["_codecs", "encode"] = _latin1_encode
    table["collections", "OrderedDict"] = collections.OrderedDict
    table["collections", "defaultdict"] = collections.defaultdict
    table["collections", "Counter"] = collections.Counter
    for cls in (datetime.date, datetime.datetime, datetime.time, datetime.timedelta, datetime.timezone):
        table["datetime", cls.__name__] = cls
    for mod in ("pathlib", "pathlib._local"):
        for name in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"):
            table[mod, name] = getattr(pathlib, name)

    # torch: tensor rebuilding, tensor types (as values), dtypes and friends
    for name in _TORCH_REBUILD_FUNCTIONS:
        table["torch._utils", name] = getattr(torch._utils, name)
    table["torch._tensor", "_rebuild_from_type_v2"] = _rebuild_from_type_v2
    table["torch.tensor", "_rebuild_from_type_v2"] = _rebuild_from_type_v2
    table["torch.serialization", "_get_layout"] = torch.serialization._get_layout
    table["torch.nn.parameter", "Parameter"] = torch.nn.Parameter
    table["torch", "Tensor"] = torch.Tensor
    table["torch", "Size"] = torch.Size
    table["torch", "device"] = torch.device
    for cls in getattr(torch, "_tensor_classes", ()):
        table[cls.__module__, cls.__name__] = cls
    for cls in (torch.storage.UntypedStorage, torch.storage.TypedStorage):
        table[cls.__module__, cls.__name__] = cls
        table["torch", cls.__name__] = cls
    value_types = (torch.dtype, torch.layout, torch.memory_format, torch.qscheme)
    for name, obj in vars(torch).items():
        if isinstance(obj, value_types):
            table["torch", name] = obj

    # numpy: arrays, scalars and dtypes, under the numpy 1.x (numpy.core) and 2.x (numpy._core) names
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    for core in ("numpy.core", "numpy._core"):
        table[f"{core}.multiarray", "_reconstruct"] = reconstruct
        table[f"{core}.multiarray", "scalar"] = scalar
        table[f"{core}.numeric", "_frombuffer"] = frombuffer
    table["numpy", "ndarray"] = np.ndarray
    table["numpy", "dtype"] = np.dtype
    dtypes_module = getattr(np, "dtypes", None)
    if dtypes_module is not None:
        for name, obj in vars(dtypes_module).items():
            if isinstance(obj, type) and issubclass(obj, np.dtype):
                table["numpy.dtypes", name] = obj

    # this module's own inert helpers (a re-saved checkpoint that held stand-ins names them)
    table[__name__, "stand_in_class"] = stand_in_class
    table[__name__, "_rebuild_stand_in"] = _rebuild_stand_in
    return table


#: torch's tensor rebuild functions that checkpoints of this project's models use, with their argument checks.
#: Sparse, quantized, nested and meta tensors are left out: no model here stores them.
_TORCH_REBUILD_FUNCTIONS = {
    "_rebuild_tensor": _rebuild_tensor_args,
    "_rebuild_tensor_v2": _rebuild_tensor_v2_args,
    "_rebuild_tensor_v3": _rebuild_tensor_v3_args,
    "_rebuild_parameter": _rebuild_parameter_args,
    "_rebuild_parameter_with_state": _rebuild_parameter_with_state_args,
    "_rebuild_device_tensor_from_numpy": _device_tensor_args,
    "_rebuild_device_tensor_from_cpu_tensor": _device_tensor_args,
}


@lru_cache(maxsize=1)
def _call_policies() -> dict[int, tuple[Any, Any]]:
    """id(callable) -> (callable, argument check) for every global that a pickle may call (REDUCE, NEWOBJ,
    INST/OBJ). Types that are only named as values (torch.Tensor, storage classes, numpy.ndarray) are absent."""
    policies: dict[int, tuple[Any, Any]] = {}

    def allow(obj: Any, check: Any) -> None:
        policies[id(obj)] = (obj, check)

    for t in (set, frozenset, list, dict, tuple):
        allow(t, _container_args)
    for t in (bytes, bytearray):
        allow(t, _bytes_args)
    for t in (complex, int, float, bool, str):
        allow(t, _scalar_args)
    allow(slice, _int_args)
    allow(range, _int_args)
    allow(object, _no_args)
    allow(_latin1_encode, _str_args)
    allow(collections.OrderedDict, _container_args)
    allow(collections.Counter, _container_args)
    allow(collections.defaultdict, _defaultdict_args)
    for cls in (datetime.date, datetime.datetime, datetime.time, datetime.timedelta, datetime.timezone):
        allow(cls, _datetime_args)
    for name in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"):
        allow(getattr(pathlib, name), _str_args)
    for name, check in _TORCH_REBUILD_FUNCTIONS.items():
        fn = getattr(torch._utils, name)
        allow(fn, check)
        _TENSOR_REBUILDERS.add(fn)
    allow(_rebuild_from_type_v2, _rebuild_from_type_args)
    allow(torch.serialization._get_layout, _str_args)
    allow(torch.nn.Parameter, _parameter_args)
    allow(torch.Size, _size_args)
    allow(torch.device, _scalar_args)
    table = _allowed_globals()
    allow(table["numpy.core.multiarray", "_reconstruct"], _reconstruct_args)
    allow(table["numpy.core.multiarray", "scalar"], _numpy_scalar_args)
    allow(table["numpy.core.numeric", "_frombuffer"], _frombuffer_args)
    allow(np.dtype, _dtype_args)
    for (module, _), obj in table.items():
        if module == "numpy.dtypes":
            allow(obj, _dtype_args)
    allow(stand_in_class, _stand_in_name_args)
    allow(_rebuild_stand_in, _stand_in_name_args)
    return policies


def _call_check(obj: Any) -> Any:
    """The argument check for calling ``obj``, or None if the allow-list does not let a pickle call it."""
    if isinstance(obj, _StandInMeta):
        return _record_args
    entry = _call_policies().get(id(obj))
    return entry[1] if entry is not None and entry[0] is obj else None


def _record_args(args: tuple, kwargs: dict) -> None:
    """Stand-in classes only record their arguments."""


def _refusal_reason(module: str, name: str) -> str:
    if module == "builtins":
        return (f"builtins.{name} is not an allowed builtin (allowed: {', '.join(sorted(_BUILTINS))}); "
                f"a pickle that names it could run code")
    if module == "torch" or module.startswith("torch."):
        return ("only torch's tensor/storage rebuild functions, Tensor, Parameter, Size, device, dtypes and "
                "layouts are allowed from torch")
    if module == "numpy" or module.startswith("numpy."):
        return "only numpy's array, scalar and dtype reconstruction is allowed from numpy"
    return (f"module {module!r} is not on the allow-list (torch tensors, builtin containers and scalars, "
            f"collections, datetime, pathlib, numpy arrays, and stand-ins for {', '.join(STAND_IN_MODULES)})")


def resolve_global(module: str, name: str, source: str = "<checkpoint>") -> Any:
    """The object a checkpoint may refer to as ``module.name``, or `UnsafeCheckpointError`."""
    if not isinstance(module, str) or not isinstance(name, str):
        raise UnsafeCheckpointError(f"{module!r}.{name!r}", source, "global names must be strings")
    obj = _allowed_globals().get((module, name))
    if obj is not None:
        return obj
    if module.split(".", 1)[0] in STAND_IN_MODULES:
        return stand_in_class(module, name)
    raise UnsafeCheckpointError(f"{module}.{name}", source, _refusal_reason(module, name))


# --------------------------------------------------------------------------------------------------
# The restricted unpickler
# --------------------------------------------------------------------------------------------------


def _name_of(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{qualname}"


#: Attribute names that a stand-in's state may not set: they would shadow its dict methods (``keys``,
#: ``items``, ``get``, ...) or its bookkeeping, so that code reading the checkpoint would run the file's values.
_STAND_IN_RESERVED = frozenset(dir(StandIn))


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be overridden
    """Unpickler whose globals come from the allow-list and whose calling opcodes are re-checked."""

    source: ClassVar[str] = "<checkpoint>"
    #: Most bytes the storages of the file may claim together (the size of the file), or None for no bound.
    max_storage_bytes: ClassVar[int | None] = None
    #: Bytes of each storage record of a zip checkpoint (``data/<key>``), when the storages are mapped from
    #: the file: each storage must then claim exactly its record's bytes. None: not checked.
    storage_records: ClassVar[Mapping[str, int] | None] = None
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._claimed_storages: dict[Any, int] = {}
        self._claimed_total = 0

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports and isinstance(module, str) and isinstance(name, str):
            # Python 2 names (``__builtin__.long``, ...), as the standard unpickler maps them; pure data
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        return resolve_global(module, name, self.source)

    def load_global(self) -> None:
        module, name = self.readline(), self.readline()
        if not module.endswith(b"\n") or not name.endswith(b"\n"):
            raise EOFError("the pickle ends inside a GLOBAL opcode (truncated file)")
        self.append(self.find_class(module[:-1].decode("utf-8"), name[:-1].decode("utf-8")))

    dispatch[pickle.GLOBAL[0]] = load_global

    # ---- calls: only allow-listed callables, each with its argument check

    def _call(self, func: Any, args: Any, kwargs: Any, opcode: str, new: bool = False) -> Any:
        check = _call_check(func)
        if check is None:
            raise UnsafeCheckpointError(_name_of(func), self.source,
                                        f"{opcode} may only call allow-listed functions and classes")
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise pickle.UnpicklingError(f"{opcode} arguments must be a tuple (and a dict); got "
                                         f"{type(args).__name__}")
        try:
            check(args, kwargs)
            if new:
                if not isinstance(func, type):
                    raise _PolicyViolation("needs a class")
                return func.__new__(func, *args, **kwargs)
            return func(*args, **kwargs)
        except _PolicyViolation as err:
            raise UnsafeCheckpointError(_name_of(func), self.source, f"{opcode}: {err}") from None

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args, {}, "REDUCE")

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, {}, "NEWOBJ", new=True))

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, kwargs, "NEWOBJ_EX", new=True))

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _instantiate(self, klass: Any, args: list) -> None:  # INST and OBJ
        if not isinstance(klass, type):
            raise UnsafeCheckpointError(_name_of(klass), self.source, "INST/OBJ needs a class")
        self.append(self._call(klass, tuple(args), {}, "INST/OBJ"))

    # ---- storages: what the file claims must fit in the file

    def _check_persistent_id(self, pid: Any) -> None:
        if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
            raise UnsafeCheckpointError(f"persistent id {str(pid)[:60]}", self.source,
                                        "only tensor storages may be referenced from outside the pickle")
        if (self.max_storage_bytes is None and self.storage_records is None) or len(pid) < 5:
            return
        storage_type, key, numel = pid[1], pid[2], pid[4]
        dtype = getattr(storage_type, "dtype", torch.uint8)
        if type(numel) is not int or numel < 0 or not isinstance(dtype, torch.dtype):
            raise InvalidCheckpointError(f"{self.source}: a storage claims {numel!r} elements of {dtype!r}")
        nbytes = numel * dtype.itemsize
        if self.storage_records is not None:
            stored = self.storage_records.get(str(key))
            if stored != nbytes:
                raise InvalidCheckpointError(
                    f"{self.source}: storage {str(key)[:40]!r} claims {nbytes:,} bytes, but the file's record "
                    f"data/{str(key)[:40]} {'is missing' if stored is None else f'holds {stored:,}'}; "
                    f"the file is corrupt or crafted")
        self._claimed_total += nbytes - self._claimed_storages.get(key, 0)
        self._claimed_storages[key] = nbytes
        if self.max_storage_bytes is not None and self._claimed_total > self.max_storage_bytes:
            raise InvalidCheckpointError(
                f"{self.source}: its storages claim {self._claimed_total:,} bytes, more than the file's "
                f"{self.max_storage_bytes:,}; the file is corrupt or crafted")

    def load_persid(self) -> None:
        raise pickle.UnpicklingError("text persistent ids (PERSID) do not occur in checkpoints")

    dispatch[pickle.PERSID[0]] = load_persid

    def load_binpersid(self) -> None:
        pid = self.stack.pop()
        self._check_persistent_id(pid)
        self.append(self.persistent_load(pid))

    dispatch[pickle.BINPERSID[0]] = load_binpersid

    # ---- state: only on stand-ins, arrays and a state dict's _metadata

    def load_build(self) -> None:
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        kind = type(inst)
        if isinstance(inst, StandIn):
            try:
                _set_stand_in_state(inst, state)
            except ValueError as err:
                raise UnsafeCheckpointError(_name_of(kind), self.source, str(err)) from None
        elif kind is np.ndarray or isinstance(inst, np.dtype):
            kind.__setstate__(inst, state)
        elif kind is collections.OrderedDict and isinstance(state, dict) and set(state) <= {"_metadata"} \
                and isinstance(state.get("_metadata", {}), dict):
            inst.__dict__.update(state)  # a module state dict's version metadata
        else:
            raise UnsafeCheckpointError(_name_of(kind), self.source,
                                        "BUILD may only set the state of stand-ins and arrays, and the _metadata "
                                        "of an OrderedDict state dict; attributes on containers or tensors could "
                                        "shadow their methods")

    dispatch[pickle.BUILD[0]] = load_build

    # ---- container filling: methods come from the type, never from attributes the file could set

    def _extend(self, items: list) -> None:
        target = self.stack[-1]
        if type(target) is list:
            list.extend(target, items)
        elif isinstance(target, StandIn):
            StandIn.extend(target, items)
        else:
            raise UnsafeCheckpointError(_name_of(type(target)), self.source, "APPENDS needs a list")

    def load_append(self) -> None:
        value = self.stack.pop()
        self._extend([value])

    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        self._extend(self.pop_mark())

    dispatch[pickle.APPENDS[0]] = load_appends

    def _set_items(self, items: list) -> None:
        target = self.stack[-1]
        if not isinstance(target, dict):
            raise UnsafeCheckpointError(_name_of(type(target)), self.source, "SETITEM(S) needs a dict")
        for i in range(0, len(items) - 1, 2):
            type(target).__setitem__(target, items[i], items[i + 1])

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items([key, value])

    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        self._set_items(self.pop_mark())

    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise UnsafeCheckpointError(_name_of(type(target)), self.source, "ADDITEMS needs a set")
        set.update(target, items)

    dispatch[pickle.ADDITEMS[0]] = load_additems

    def get_extension(self, code: int) -> None:
        raise UnsafeCheckpointError(f"extension code {code}", self.source,
                                    "the copyreg extension registry is not used by checkpoints")


def restricted_pickle_module(source: str = "<checkpoint>", max_storage_bytes: int | None = None,
                             storage_records: Mapping[str, int] | None = None) -> types.SimpleNamespace:
    """A ``pickle_module`` for ``torch.load`` whose unpickler enforces the allow-list; errors name ``source``.
    ``max_storage_bytes`` bounds the bytes that the tensor storages of the file may claim together;
    ``storage_records`` (storage key -> bytes of its record) makes each storage claim exactly its record."""
    unpickler = type("RestrictedUnpickler", (_RestrictedUnpickler,),
                     {"source": str(source), "max_storage_bytes": max_storage_bytes,
                      "storage_records": storage_records})

    def load(file: Any, **kwargs: Any) -> Any:
        return unpickler(file, **kwargs).load()

    def loads(data: bytes, **kwargs: Any) -> Any:
        return load(io.BytesIO(data), **kwargs)

    return types.SimpleNamespace(__name__=f"{__name__}.restricted_pickle", Unpickler=unpickler, load=load,
                                 loads=loads, UnpicklingError=pickle.UnpicklingError)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _download_hint(path: Path) -> str:
    parts = Path(os.path.abspath(path)).parts
    if "models" not in parts:
        return ""
    after = parts[len(parts) - 1 - parts[::-1].index("models") + 1:]
    scripts = [DOWNLOAD_SCRIPTS[after[0]]] if after and after[0] in DOWNLOAD_SCRIPTS else list(
        DOWNLOAD_SCRIPTS.values())
    return (" Model-zoo checkpoints are downloaded by " + " and ".join(
        f"`bash {s}`" for s in scripts) + " (LDMs land in models/ldm/, autoencoders in models/first_stage_models/).")


_SPECIAL_FILE_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_file(path: Path) -> int:
    """The size of the regular file ``path``; a clear error for anything else. Special files are never opened
    (reading a FIFO blocks, ``/dev/zero`` never ends)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}.{_download_hint(path)}") from None
    except OSError as err:
        raise InvalidCheckpointError(f"cannot read checkpoint {path}: {err.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"expected a checkpoint file, got the directory {path}")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _SPECIAL_FILE_KINDS if test(st.st_mode)), "a special file")
        raise InvalidCheckpointError(f"{path} is {kind}, not a regular file; a checkpoint must be a file on disk")
    if st.st_size == 0:
        raise InvalidCheckpointError(f"checkpoint {path} is empty (0 bytes); an interrupted download or save? "
                                     f"Download or save it again.{_download_hint(path)}")
    if not os.access(path, os.R_OK):
        raise InvalidCheckpointError(f"cannot read checkpoint {path}: permission denied")
    return st.st_size


def _sniff_format(path: Path, size: int) -> str:
    """'zip' (torch's format), 'safetensors', 'tar' or 'pickle' (torch's legacy format or a plain pickle),
    from the file's first bytes, whatever its name."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{":  # an 8-byte header length, then the JSON header
        return "safetensors"
    if size >= 512 and tarfile.is_tarfile(path):
        return "tar"
    return "pickle"


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
            f"truncated or corrupt.{_download_hint(path)}") from err


def _zip_contents(path: Path, size: int) -> tuple[bool, dict[str, int] | None]:
    """Whether the zip file ``path`` is a TorchScript archive, and the bytes of each storage record
    (``<archive>/data/<key>`` -> size) when every one is stored once, uncompressed, inside the file's
    ``size`` bytes, so that it can be mapped from the file as it lies (else None)."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    names = [info.filename for info in infos]
    if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names):
        return True, None
    pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pickles) != 1:
        return False, None
    prefix = pickles[0][:-len("data.pkl")] + "data/"
    records = {}
    for info in infos:
        if info.filename.startswith(prefix):
            key = info.filename[len(prefix):]
            if (info.compress_type != zipfile.ZIP_STORED or info.header_offset + info.file_size > size
                    or key in records):
                return False, None
            records[key] = info.file_size
    return False, records


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
            if mmap and records is not None and not str(path).endswith(_SAFETENSORS_SUFFIX):
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
            f"corrupt, or not a PyTorch checkpoint.{_download_hint(path)}") from err
    _check_expansion(obj, size, source)
    return obj


def _extract_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
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
    return _extract_state_dict(load_checkpoint(path, map_location=map_location), path)


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


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


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
    is_safetensors = path.suffix == _SAFETENSORS_SUFFIX
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
    if dst.suffix != _SAFETENSORS_SUFFIX:
        raise ValueError(f"the output must end in {_SAFETENSORS_SUFFIX}; got {dst}")
    obj = load_checkpoint(src)
    full = _extract_state_dict(obj, src)
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


def _describe(path: str) -> list[str]:
    obj = load_checkpoint(path)
    lines = [f"{path}: {type(obj).__name__}"]
    if isinstance(obj, Mapping):
        lines.append("top-level keys: " + ", ".join(map(str, obj.keys())))
        for key in ("epoch", "global_step", "pytorch-lightning_version", "hyper_parameters", "hparams"):
            if key in obj:
                lines.append(f"{key}: {to_builtin(obj[key])}")
    state_dict = _extract_state_dict(obj, path)
    n_params = sum(v.numel() for v in state_dict.values() if isinstance(v, torch.Tensor))
    lines.append(f"state_dict: {len(state_dict)} entries, {n_params:,} elements")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m ldm.checkpoint {convert IN OUT | info PATH}``."""
    parser = argparse.ArgumentParser(prog="python -m ldm.checkpoint", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="write the weights of a .ckpt to a .safetensors file")
    convert.add_argument("src", help="checkpoint to read (.ckpt, .pt, .pth, .safetensors)")
    convert.add_argument("dst", help="output file, ending in .safetensors")
    info = sub.add_parser("info", help="show what a checkpoint holds")
    info.add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            out = convert_to_safetensors(args.src, args.dst)
            print(f"wrote {out}")
        else:
            print("\n".join(_describe(args.path)))
    except (OSError, InvalidCheckpointError, UnsafeCheckpointError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
