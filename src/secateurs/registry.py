"""Pruning methods, registered in one place by name, each paired with its typed options class.

Each method is a small class that knows its ``name``, its ``kind`` (structured or unstructured) and
its ``options`` class (as PEFT pairs each tuner with its config); the CLI, the API and the run frame
look methods up here and nowhere else. To add a method: write the class (in ``structured/methods.py``
or ``unstructured/``), give it a name and an options class, and list it below.
"""

from __future__ import annotations

from typing import Any

from .errors import SecateursError
from .options import build
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
    """The typed options of method ``name`` from an options object, a dict of field values, or None."""
    cls = get_method(name).options
    try:
        return build(cls, options)
    except SecateursError as exc:
        raise SecateursError(f"{name}: {exc}") from exc


def list_methods() -> list[dict[str, Any]]:
    """Name, kind and one-line summary of every registered method."""
    return [
        {"name": name, "kind": cls.kind, "summary": (cls.__doc__ or "").strip().splitlines()[0],
         "options": cls.options.__name__}
        for name, cls in sorted(METHODS.items())
    ]
