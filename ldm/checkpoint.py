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
* the opcodes that call or mutate objects (REDUCE, NEWOBJ, INST/OBJ, BUILD) are re-checked, so only
  allow-listed callables ever run, and state is only set on stand-ins, arrays and OrderedDicts.

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
import sys
import tarfile
import types
import zipfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

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

_TORCH_REBUILD_FUNCTIONS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                            "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
                            "_rebuild_nested_tensor", "_rebuild_meta_tensor_no_storage",
                            "_rebuild_device_tensor_from_numpy", "_rebuild_device_tensor_from_cpu_tensor")


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

    # torch: tensor rebuilding, storages, tensor types, dtypes and friends
    for name in _TORCH_REBUILD_FUNCTIONS:
        fn = getattr(torch._utils, name, None)
        if fn is not None:
            table["torch._utils", name] = fn
    table["torch._tensor", "_rebuild_from_type_v2"] = torch._tensor._rebuild_from_type_v2
    table["torch.tensor", "_rebuild_from_type_v2"] = torch._tensor._rebuild_from_type_v2
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


@lru_cache(maxsize=1)
def _allowed_callable_ids() -> frozenset[int]:
    return frozenset(id(obj) for obj in _allowed_globals().values() if callable(obj))


def _is_allowed_callable(obj: Any) -> bool:
    return id(obj) in _allowed_callable_ids() or isinstance(obj, _StandInMeta)


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


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be overridden
    """Unpickler whose globals come from the allow-list and whose calling opcodes are re-checked."""

    source: ClassVar[str] = "<checkpoint>"
    dispatch = dict(pickle._Unpickler.dispatch)

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

    def _check_callable(self, func: Any, opcode: str) -> None:
        if not _is_allowed_callable(func):
            raise UnsafeCheckpointError(_name_of(func), self.source,
                                        f"{opcode} may only call allow-listed functions and classes")

    def _check_class(self, cls: Any, opcode: str) -> None:
        if not isinstance(cls, type):
            raise UnsafeCheckpointError(_name_of(cls), self.source, f"{opcode} needs a class")
        self._check_callable(cls, opcode)

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        self._check_callable(func, "REDUCE")
        if not isinstance(args, tuple):
            raise pickle.UnpicklingError(f"REDUCE arguments must be a tuple; got {type(args).__name__}")
        stack[-1] = func(*args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_class(cls, "NEWOBJ")
        self.append(cls.__new__(cls, *args))

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_class(cls, "NEWOBJ_EX")
        self.append(cls.__new__(cls, *args, **kwargs))

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _instantiate(self, klass: Any, args: list) -> None:  # INST and OBJ
        self._check_class(klass, "INST/OBJ")
        self.append(klass(*args))

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
        elif kind is collections.OrderedDict and isinstance(state, dict) and all(isinstance(k, str) for k in state):
            inst.__dict__.update(state)
        elif kind is torch.Tensor and isinstance(state, tuple):  # legacy tensor serialization
            inst.set_(*state)
        elif kind is torch.nn.Parameter:
            torch.nn.Parameter.__setstate__(inst, state)
        else:
            raise UnsafeCheckpointError(_name_of(kind), self.source,
                                        "BUILD may only set the state of stand-ins, arrays and OrderedDicts")

    dispatch[pickle.BUILD[0]] = load_build

    # APPEND(S) and ADDITEMS look methods up on the instance in the standard unpickler, where an attribute
    # set by BUILD could shadow them; here the methods come from the type, for the types that have them.
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


def restricted_pickle_module(source: str = "<checkpoint>") -> types.SimpleNamespace:
    """A ``pickle_module`` for ``torch.load`` whose unpickler enforces the allow-list; errors name ``source``."""
    unpickler = type("RestrictedUnpickler", (_RestrictedUnpickler,), {"source": str(source)})

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


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}.{_download_hint(path)}")
    if path.is_dir():
        raise IsADirectoryError(f"expected a checkpoint file, got the directory {path}")
    if path.stat().st_size == 0:
        raise InvalidCheckpointError(f"checkpoint {path} is empty (0 bytes); an interrupted download or save? "
                                     f"Download or save it again.{_download_hint(path)}")


def _safetensors_device(map_location: Any) -> str:
    if map_location is None:
        return "cpu"
    if isinstance(map_location, (str, torch.device)):
        return str(map_location)
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


def _is_torchscript_zip(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in archive.namelist())


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a whole checkpoint without running code from it.

    ``.safetensors`` files give their dict of tensors. Torch files (zip or legacy format) are unpickled
    against the allow-list; Lightning/omegaconf/argparse objects come back as `StandIn` objects.
    Raises FileNotFoundError (with the download script for model-zoo paths), InvalidCheckpointError
    for unreadable files and UnsafeCheckpointError for a file that names a forbidden global.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix == _SAFETENSORS_SUFFIX:
        return _load_safetensors(path, map_location)
    if zipfile.is_zipfile(path):
        if _is_torchscript_zip(path):
            raise UnsafeCheckpointError("TorchScript archive", str(path),
                                        "TorchScript archives carry code; load them with torch.jit.load if trusted")
    elif tarfile.is_tarfile(path):
        raise InvalidCheckpointError(f"{path} is a tar archive (the pre-0.4 PyTorch format), which is not supported")
    try:
        return torch.load(path, map_location=map_location, pickle_module=restricted_pickle_module(str(path)),
                          weights_only=False)
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # torch, zipfile and pickle each raise their own types for a damaged file
        raise InvalidCheckpointError(
            f"could not read checkpoint {path} ({type(err).__name__}: {err}); the file may be truncated or "
            f"corrupt, or not a PyTorch checkpoint.{_download_hint(path)}") from err


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
    except (FileNotFoundError, InvalidCheckpointError, UnsafeCheckpointError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
