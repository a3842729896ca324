"""Pruning methods, registered in one place by name, each paired with its typed options class.

Each method is a small class that knows its ``name``, its ``kind`` (structured or unstructured) and
its ``options`` class (as PEFT pairs each tuner with its config); the CLI, the API and the run frame
look methods up here and nowhere else. To add a method: write the class (in ``structured/methods.py``
or ``unstructured/``), give it a name and an options class, and list it below.
"""

from __future__ import annotations

from typing import Any

from .errors import SecateursError
from .structured.methods import FinerCut, GreedyPPL, LayerSearch, OneShotPPL, RelativeMagnitude, ShortGPT
from .unstructured.dpruner import DPruner
from .unstructured.methods import Magnitude, SparseGPT, Wanda

METHODS: dict[str, type] = {cls.name: cls for cls in (
    GreedyPPL, LayerSearch, OneShotPPL, FinerCut, ShortGPT, RelativeMagnitude,
    Magnitude, Wanda, SparseGPT, DPruner,
)}


def get_method(name: str) -> Any:
    if name not in METHODS:
        raise SecateursError(f"unknown method '{name}'; registered: {', '.join(sorted(METHODS))}")
    return METHODS[name]()


def make_options(name: str, options: Any = None) -> Any:
    """The typed options of method ``name`` from an options object or a dict of field values."""
    cls = get_method(name).options
    if isinstance(options, cls):
        return options
    if options is not None and not isinstance(options, dict):
        raise SecateursError(f"{name} takes {cls.__name__}, not {type(options).__name__}")
    values = dict(options or {})
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise SecateursError(f"{name} has no option '{unknown[0]}'; its options: {', '.join(sorted(known))}")
    return cls(**values)


def option_classes() -> list[type]:
    """Every distinct options class, bases before the classes built on them (the CLI's groups)."""
    classes = {cls.options for cls in METHODS.values()}
    return sorted(classes, key=lambda c: (len(c.__mro__), c.__name__))


def list_methods() -> list[dict[str, Any]]:
    """Name, kind and one-line summary of every registered method."""
    return [
        {"name": name, "kind": cls.kind, "summary": (cls.__doc__ or "").strip().splitlines()[0],
         "options": cls.options.__name__}
        for name, cls in sorted(METHODS.items())
    ]
