"""Pruning methods, registered in one place by name, each paired with its typed options class.

Each method is a small class that knows its ``name``, its ``kind`` (structured or unstructured), its
``options`` class (as PEFT pairs each tuner with its config) and its ``memory`` policy (what
`secateurs plan` counts for it, whether ``--offload disk`` streams its weights, what ``--max-memory``
decides for it); the CLI, the API, the run frame and the plan look methods up here and nowhere else.
To add a method: write the class (in ``structured/`` or ``unstructured/``), give it a name, an options
class and a memory policy, and add it to the list below (or call :func:`register`).
"""

from __future__ import annotations

from typing import Any

from .errors import SecateursError
from .offload import BudgetOption, OffloadOptions
from .options import build
from .plan import OFFLOAD_CHOSEN, RunShape
from .structured.methods import FinerCut, GreedyPPL, LayerSearch, OneShotPPL, RelativeMagnitude, ShortGPT
from .unstructured.dpruner import DPruner
from .unstructured.methods import Magnitude, SparseGPT, Wanda

METHODS: dict[str, type] = {}


def register(cls: type) -> type:
    """Add a method class to the registry (usable as a decorator); its policy must fit its options."""
    memory, options = cls.memory, cls.options
    if memory.streams_weights and not issubclass(options, OffloadOptions):
        raise TypeError(f"{cls.name}: a method that streams its weights takes --offload (OffloadOptions)")
    if memory.budget is not None and not issubclass(options, BudgetOption):
        raise TypeError(f"{cls.name}: a method with a memory budget takes --max-memory (BudgetOption)")
    if memory.budget == OFFLOAD_CHOSEN and not issubclass(options, OffloadOptions):
        raise TypeError(f"{cls.name}: --max-memory chooses --offload, which its options lack (OffloadOptions)")
    METHODS[cls.name] = cls
    return cls


for _method in (GreedyPPL, LayerSearch, OneShotPPL, FinerCut, ShortGPT, RelativeMagnitude,
                Magnitude, Wanda, SparseGPT, DPruner):
    register(_method)


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


def run_shape(name: str, **sizes: Any) -> RunShape:
    """The sizes of a run of method ``name`` for `secateurs plan`, with the method's memory policy."""
    return RunShape(name, get_method(name).memory, **sizes)


def list_methods() -> list[dict[str, Any]]:
    """Name, kind and one-line summary of every registered method."""
    return [
        {"name": name, "kind": cls.kind, "summary": (cls.__doc__ or "").strip().splitlines()[0],
         "options": cls.options.__name__, "memory": cls.memory.workload,
         "max_memory": cls.memory.budget, "streams_weights": cls.memory.streams_weights}
        for name, cls in sorted(METHODS.items())
    ]
