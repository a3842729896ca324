"""Typed method options: dataclass fields that also describe their command-line flag.

Each method pairs with one options class (see ``registry.py``); the CLI builds its argument groups
from these fields, so adding an option touches one place. Every options class derives from
:class:`Options`, which checks the fields' declared ``choices`` on creation; a class checks by hand
only what choices cannot say (ranges, combinations), in its ``__post_init__``, calling ``super()``'s.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import types
import typing
from typing import Any, Callable

from .errors import SecateursError


def option(default: Any, help: str, *, flag: str | None = None, choices: tuple[str, ...] | None = None,
           parse: Callable[[str], Any] | None = None, run_level: bool = False) -> Any:
    """A dataclass field with what the CLI needs: its help, flag (default ``--name``), choices, parser.

    ``run_level``: the CLI has one flag for the whole run (``--batch-size``) that also fills this field.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "flag": flag, "choices": choices, "parse": parse, "run_level": run_level})


@dataclasses.dataclass
class Options:
    """The root of every options class: a field's declared ``choices`` are checked here, once."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise SecateursError(f"unknown {flag_of(f)} '{value}': {flag_of(f)} must be one of {', '.join(choices)}")


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
    hints = typing.get_type_hints(cls)
    for name, v in parsed.items():
        if not _fits(v, hints[name]):
            raise SecateursError(f"{cls.__name__}: '{name}' must be {_describe(hints[name])}, got {v!r}")
    return cls(**parsed)


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "text", type(None): "empty",
          os.PathLike: "a path", dict: "a mapping"}


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type a field declares (a recipe says ``samples: two``: it does not)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if hint is str:  # a path given as a Path is text too
        return isinstance(value, (str, os.PathLike))
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) in (list, tuple, collections.abc.Sequence):
        return "a list"
    return _NAMES.get(typing.get_origin(hint) or hint, str(hint))


def as_dict(options: Any) -> dict[str, Any]:
    """The options as recorded in a report's recipe."""
    return dataclasses.asdict(options)
