"""Exporters: a pruned directory in the format an inference engine serves.

| format | engine                       | what it holds                                                    |
|--------|------------------------------|------------------------------------------------------------------|
| hf     | transformers, secateurs      | the checkpoint ``secateurs prune`` writes (copied)               |
| gguf   | llama.cpp (and tools on it)  | the ``deci`` architecture: per-layer head counts and MLP widths   |
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import SecateursError
from ..files import atomic_directory, check_output_path
from ..models.adapter import ModelAdapter
from ..models.checkpoint import pruning_record
from ..models.loading import load_model
from .gguf import GGUF_TYPES, check_exportable, write_gguf

FORMATS = ("hf", "gguf")


def source_gguf(directory: Path) -> Path | None:
    """The GGUF file a pruned directory's model was loaded from (its tokenizer goes into a GGUF export)."""
    report = directory / "report.json"
    if not report.is_file():
        return None
    try:
        gguf = json.loads(report.read_text()).get("model", {}).get("gguf")
    except ValueError:
        return None
    return Path(gguf) if gguf else None


def export(directory: str | Path, fmt: str, out: str | Path, gguf_type: str = "f32",
           overwrite: bool = False) -> dict[str, Any]:
    """Export the pruned model in ``directory`` (written by ``secateurs prune``) to ``out``."""
    directory = Path(directory)
    if fmt not in FORMATS:
        raise SecateursError(f"unknown --format '{fmt}'; choose {', '.join(FORMATS)}")
    if gguf_type not in GGUF_TYPES:
        raise SecateursError(f"unknown --gguf-type '{gguf_type}'; choose {', '.join(GGUF_TYPES)}")
    check_output_path(out, overwrite)  # before the model loads
    if not (directory / "config.json").is_file() or not pruning_record(directory):
        raise SecateursError(f"{directory} was not written by `secateurs prune` (no secateurs_pruning in its config.json)")
    if fmt == "hf":
        with atomic_directory(out, overwrite=overwrite) as tmp:
            shutil.copytree(directory, tmp, dirs_exist_ok=True)
        return {"format": "hf", "path": str(out)}
    lm = load_model(str(directory), dtype="float32", device="cpu")
    adapter = ModelAdapter(lm.model)
    check_exportable(adapter)
    record = write_gguf(adapter, out, source_gguf(directory), gguf_type, name=directory.name, overwrite=overwrite)
    return {**record, "path": str(out)}
