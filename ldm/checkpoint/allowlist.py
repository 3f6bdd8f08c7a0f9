"""The allow-list of the checkpoint loader: the globals a checkpoint may name and the calls it may make.

Every global a pickle refers to is looked up in a fixed table (`resolve_global`): torch's tensor and storage
rebuild functions, dtypes, ``collections.OrderedDict``, builtin containers and scalars, numpy
array/scalar/dtype reconstruction, ``datetime`` and ``pathlib`` values; nothing is imported. Classes of
the modules in `STAND_IN_MODULES` resolve to inert stand-ins; anything else (``os.system``,
``builtins.eval``, ``functools.partial``, ...) raises `UnsafeCheckpointError`. Each callable a pickle may
call comes with a check of its arguments (`_call_check`), run before the call: ``bytes(10**12)``,
``list(range(...))``, a preallocating numpy ``_reconstruct`` or a tensor that reaches outside its storage
are refused.
"""
from __future__ import annotations

import collections
import datetime
import pathlib
import pickle
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ldm.checkpoint.errors import UnsafeCheckpointError
from ldm.checkpoint.standins import STAND_IN_MODULES, _rebuild_stand_in, _StandInMeta, stand_in_class


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

    # the stand-ins' own inert helpers, which a re-saved checkpoint that held stand-ins names (files saved
    # before the loader became a package name them under "ldm.checkpoint")
    for module in ("ldm.checkpoint", stand_in_class.__module__):
        table[module, "stand_in_class"] = stand_in_class
        table[module, "_rebuild_stand_in"] = _rebuild_stand_in
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


def _name_of(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{qualname}"
