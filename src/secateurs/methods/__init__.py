"""Pruning methods, registered in one place by name.

Each method is a small class with typed, validated options; the CLI and the API look methods up here
and nowhere else. The registry is filled as methods land (see the project's issues).
"""

from __future__ import annotations

from typing import Any

METHODS: dict[str, type] = {}


def list_methods() -> list[dict[str, Any]]:
    """Name, kind and one-line summary of every registered method."""
    return [
        {"name": name, "kind": getattr(cls, "kind", "?"), "summary": (cls.__doc__ or "").strip().splitlines()[0]}
        for name, cls in sorted(METHODS.items())
    ]
