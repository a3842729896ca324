"""What an exporter is: one format, as :mod:`.registry` lists it.

An exporter knows its ``name`` (``--format``), the ``engine`` that serves it, whether it writes a file or a
directory, where ``secateurs prune --format NAME`` puts it inside the pruned directory, its typed
``options`` (dataclass fields that also describe their flag, as a method's options do), what it can
express (``check``), about how many bytes it adds (``extra_bytes``) and how it is written (``write``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SecateursError
from ..models.adapter import ModelAdapter
from ..models.loading import LoadedModel
from ..options import Options


@dataclass
class NoOptions(Options):
    """A format without options."""


class Exporter:
    """One format a pruned model is written in. A subclass sets the attributes and overrides what it needs."""

    name: str  # its --format
    engine: str  # what serves it
    writes_file: bool = False  # a file (else a directory)
    inside_pruned_directory: str | None = None  # its name beside the checkpoint; None: it is the checkpoint itself
    options: type = NoOptions

    @property
    def is_checkpoint(self) -> bool:
        """The format is the checkpoint ``secateurs prune`` writes: exporting copies the pruned directory."""
        return self.inside_pruned_directory is None

    def check(self, adapter: ModelAdapter, lm: LoadedModel) -> None:
        """Fail now (before any pruning work), naming what the engine lacks, if it cannot express the model."""

    def extra_bytes(self, num_params: int, weight_bytes: int, options: Any) -> float:
        """About how many bytes the export adds beside the checkpoint (for the free-space check)."""
        return 0

    def write(self, adapter: ModelAdapter, lm: LoadedModel, path: Path, options: Any, name: str = "pruned",
              overwrite: bool = False) -> dict[str, Any]:
        """Write ``adapter.model`` (as pruned) to ``path``; return what was written."""
        raise SecateursError(f"format '{self.name}' is not an engine format")
