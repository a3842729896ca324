"""Export formats, registered in one place by name.

The CLI (``--format`` and the formats' option flags), ``OutputSpec`` and the run frame look formats up
here and nowhere else. To add a format: write its module with an :class:`~.exporter.Exporter` subclass
(and its options class, if it has options) and list it below. An option also needs its field in
``OutputSpec`` (``run/spec.py``), whose fields the options are built from by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import SecateursError
from ..options import build
from .exporter import Exporter
from .gguf import GGUFExporter
from .hf import HFExporter
from .nemotron_nas import NemotronNASExporter

EXPORTERS: dict[str, Exporter] = {e.name: e for e in (HFExporter(), GGUFExporter(), NemotronNASExporter())}
DEFAULT_FORMAT = HFExporter.name


def get_exporter(fmt: str) -> Exporter:
    if fmt not in EXPORTERS:
        raise SecateursError(f"unknown --format '{fmt}'; choose {', '.join(EXPORTERS)}")
    return EXPORTERS[fmt]


def option_fields() -> list[tuple[Exporter, dataclasses.Field]]:
    """Every format's option fields, with the format that reads each."""
    return [(e, f) for e in EXPORTERS.values() for f in dataclasses.fields(e.options)]


def export_options(fmt: str, values: dict[str, Any]) -> Any:
    """The typed options of format ``fmt`` from option values by field name (``{"gguf_type": "q8_0"}``).

    Every value given is checked, whichever format reads it; a field not given takes its default.
    """
    get_exporter(fmt)
    unknown = sorted(set(values) - {f.name for _, f in option_fields()})
    if unknown:
        raise SecateursError(f"no format has the option '{unknown[0]}'; options: "
                             f"{', '.join(f.name for _, f in option_fields())}")
    built = {name: build(e.options, {f.name: values[f.name] for f in dataclasses.fields(e.options) if f.name in values})
             for name, e in EXPORTERS.items()}
    return built[fmt]
