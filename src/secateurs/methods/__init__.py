"""Pruning methods, registered in one place by name.

Each method is a small class; the CLI and the API look methods up here and nowhere else.
"""

from __future__ import annotations

from typing import Any

from ..errors import SecateursError
from .dpruner import DPruner, DPrunerOptions
from .structured import (
    FinerCut,
    GreedyPPL,
    LayerSearch,
    OneShotPPL,
    RelativeMagnitude,
    ShortGPT,
    StructuredMethod,
    StructuredOptions,
)
from .unstructured import Magnitude, SparseGPT, UnstructuredOptions, Wanda

METHODS: dict[str, type] = {
    "blockpruner": GreedyPPL,
    "layer-search": LayerSearch,
    "one-shot-ppl": OneShotPPL,
    "finercut": FinerCut,
    "shortgpt": ShortGPT,
    "relative-magnitude": RelativeMagnitude,
    "magnitude": Magnitude,
    "wanda": Wanda,
    "sparsegpt": SparseGPT,
    "dpruner": DPruner,
}


def get_method(name: str) -> Any:
    if name not in METHODS:
        raise SecateursError(f"unknown method '{name}'; registered: {', '.join(sorted(METHODS))}")
    return METHODS[name]()


def list_methods() -> list[dict[str, Any]]:
    """Name, kind and one-line summary of every registered method."""
    return [
        {"name": name, "kind": getattr(cls, "kind", "?"), "summary": (cls.__doc__ or "").strip().splitlines()[0]}
        for name, cls in sorted(METHODS.items())
    ]


__all__ = ["METHODS", "DPrunerOptions", "StructuredMethod", "StructuredOptions", "UnstructuredOptions",
           "get_method", "list_methods"]
