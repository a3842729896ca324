"""Typed method options: dataclass fields that also describe their command-line flag.

Each method pairs with one options class (see ``registry.py``); the CLI builds its argument groups
from these fields, so adding an option touches one place. Options validate themselves on creation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from .errors import SecateursError


def option(default: Any, help: str, *, flag: str | None = None, choices: tuple[str, ...] | None = None,
           parse: Callable[[str], Any] | None = None, run_level: bool = False) -> Any:
    """A dataclass field with what the CLI needs: its help, flag (default ``--name``), choices, parser.

    ``run_level``: the CLI has one flag for the whole run (``--batch-size``) that also fills this field.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "flag": flag, "choices": choices, "parse": parse, "run_level": run_level})


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def own_fields(cls: type) -> list[dataclasses.Field]:
    """The fields ``cls`` adds to its base classes (the CLI shows each field once, with its owner)."""
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    return [f for f in dataclasses.fields(cls) if f.name not in inherited]


def build(cls: type, value: Any) -> Any:
    """An instance of the dataclass ``cls`` from an instance, a dict of field values, or None (defaults).

    Strings go through a field's ``parse`` (``{"nm": "2:4"}``); an instance of a base class of ``cls``
    is promoted (``StructuredOptions(blocks=6)`` for a method that takes ``SearchOptions``).
    """
    if value is None:
        value = {}
    if isinstance(value, cls):
        return value
    if dataclasses.is_dataclass(value) and isinstance(value, cls.__mro__[1:]):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise SecateursError(f"expected {cls.__name__} or a dict, got {type(value).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise SecateursError(f"{cls.__name__} has no setting '{unknown[0]}'; its settings: {', '.join(sorted(fields))}")
    parsed = {name: fields[name].metadata["parse"](v) if isinstance(v, str) and fields[name].metadata.get("parse") else v
              for name, v in value.items()}
    return cls(**parsed)


def as_dict(options: Any) -> dict[str, Any]:
    """The options as recorded in a report's recipe."""
    return dataclasses.asdict(options)
