"""The restricted unpickler that ``torch.load`` runs on a checkpoint (`restricted_pickle_module`).

Its globals come from the allow-list (`ldm.checkpoint.allowlist`); the opcodes that call or mutate objects
(REDUCE, NEWOBJ, INST/OBJ, BUILD, SETITEM, APPEND) are re-checked: only allow-listed callables run, each
after the check of its arguments, and state is only set on stand-ins and arrays (never attributes that
would shadow a container's methods). The tensor storages a file claims may not exceed the file's size, and
when they are mapped from a zip file each must claim exactly the bytes of its record.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import types
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from ldm.checkpoint.allowlist import _call_check, _name_of, _PolicyViolation, resolve_global
from ldm.checkpoint.errors import InvalidCheckpointError, UnsafeCheckpointError
from ldm.checkpoint.standins import StandIn, _set_stand_in_state


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
