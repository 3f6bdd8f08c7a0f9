"""Stand-ins for the classes a checkpoint names but the loader never imports.

Lightning-1.x checkpoints hold instances of pytorch_lightning, omegaconf, argparse and typing classes
(``AttributeDict``, ``DictConfig``, ``Namespace``, callback classes used as keys). The loader turns each
into a `StandIn`: an inert dict subclass that records what the pickle stored and runs nothing, so a
checkpoint loads whichever Lightning version (if any) is installed. `to_builtin` turns stand-ins into plain
values for reading hyper-parameters.
"""
from __future__ import annotations

import copyreg
from collections.abc import Mapping
from typing import Any, ClassVar

#: Top-level modules whose classes load as inert `StandIn` objects instead of being imported.
STAND_IN_MODULES = ("pytorch_lightning", "lightning", "lightning_fabric", "lightning_utilities",
                    "omegaconf", "argparse", "typing")


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

#: Attribute names that a stand-in's state may not set: they would shadow its dict methods (``keys``,
#: ``items``, ``get``, ...) or its bookkeeping, so that code reading the checkpoint would run the file's values.
_STAND_IN_RESERVED = frozenset(dir(StandIn))
