"""Exporters: a pruned model in the format an inference engine serves.

| format        | engine                        | what it holds                                                    |
|---------------|-------------------------------|------------------------------------------------------------------|
| hf            | transformers, secateurs       | the checkpoint ``secateurs prune`` writes (copied)               |
| gguf          | llama.cpp (and tools on it)   | the ``deci`` architecture: per-layer head counts and MLP widths   |
| nemotron-nas  | vLLM (``DeciLMForCausalLM``)  | per-layer ``block_configs``: attention / MLP present or no-op     |

``secateurs export DIR --format F --out PATH`` converts a pruned directory; ``secateurs prune --format F``
writes the same thing inside the output directory, beside the checkpoint. Each format is one exporter
(:mod:`.exporter`) in :mod:`.registry`.
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
from ..models.loading import DTYPES, load_model
from ..reporting.report import read_report
from .registry import export_options, get_exporter


def source_gguf(directory: Path) -> str | None:
    """The GGUF file a pruned directory's model was loaded from (its tokenizer goes into a GGUF export);
    None when the directory has no report.json."""
    report = directory / "report.json"
    return read_report(report).model.get("gguf") if report.is_file() else None


def export(directory: str | Path, fmt: str, out: str | Path, *, overwrite: bool = False,
           **options: Any) -> dict[str, Any]:
    """Export the pruned model in ``directory`` (written by ``secateurs prune``) to ``out``.

    ``options``: the format's options by name (``gguf_type="q8_0"``).
    """
    directory = Path(directory)
    exporter, typed = get_exporter(fmt), export_options(fmt, options)
    check_output_path(out, overwrite)  # before the model loads
    if exporter.writes_file and Path(out).is_dir():
        raise SecateursError(f"--out {out} is a directory, and --format {fmt} writes one file: name the file "
                             f"(e.g. {Path(out) / 'model.gguf'})")
    if not (directory / "config.json").is_file() or not pruning_record(directory):
        raise SecateursError(f"{directory} was not written by `secateurs prune` (no secateurs_pruning in its config.json)")
    if exporter.is_checkpoint:
        with atomic_directory(out, overwrite=overwrite) as tmp:
            shutil.copytree(directory, tmp, dirs_exist_ok=True)
        return {"format": exporter.name, "path": str(out)}
    saved = json.loads((directory / "config.json").read_text())
    dtype = saved.get("dtype") or saved.get("torch_dtype")  # export in the dtype the pruned model was saved in
    lm = load_model(str(directory), dtype=dtype if dtype in DTYPES else "auto", device="cpu")
    lm.source["gguf"] = source_gguf(directory)  # the original source's tokenizer, when it was a GGUF file
    adapter = ModelAdapter(lm.model)
    exporter.check(adapter, lm)
    record = exporter.write(adapter, lm, Path(out), typed, name=directory.name, overwrite=overwrite)
    return {**record, "path": str(out)}
