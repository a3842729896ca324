"""Exporters: a pruned model in the format an inference engine serves.

| format        | engine                        | what it holds                                                    |
|---------------|-------------------------------|------------------------------------------------------------------|
| hf            | transformers, secateurs       | the checkpoint ``secateurs prune`` writes (copied)               |
| gguf          | llama.cpp (and tools on it)   | the ``deci`` architecture: per-layer head counts and MLP widths   |
| nemotron-nas  | vLLM (``DeciLMForCausalLM``)  | per-layer ``block_configs``: attention / MLP present or no-op     |

``secateurs export DIR --format F --out PATH`` converts a pruned directory; ``secateurs prune --format F``
writes the same thing inside the output directory (``INSIDE_PRUNED_DIRECTORY``) beside the checkpoint.
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
from ..models.loading import DTYPES, LoadedModel, load_model
from . import gguf, nemotron_nas

FORMATS = ("hf", "gguf", "nemotron-nas")
GGUF_TYPES = gguf.GGUF_TYPES
INSIDE_PRUNED_DIRECTORY = {"gguf": gguf.GGUF_FILE, "nemotron-nas": "nemotron-nas"}  # prune --format F writes it there
ENGINES = {"gguf": "llama.cpp", "nemotron-nas": "vLLM"}


def check_format(fmt: str, gguf_type: str = "f32") -> None:
    if fmt not in FORMATS:
        raise SecateursError(f"unknown --format '{fmt}'; choose {', '.join(FORMATS)}")
    if gguf_type not in GGUF_TYPES:
        raise SecateursError(f"unknown --gguf-type '{gguf_type}'; choose {', '.join(GGUF_TYPES)}")


def check_exportable(fmt: str, adapter: ModelAdapter, lm: LoadedModel) -> None:
    """Fail now (before any pruning work), naming what the engine lacks, if ``fmt`` cannot express the model."""
    if fmt == "gguf":
        gguf.check_exportable(adapter)
        gguf.check_tokenizer_source(lm.source.get("gguf"), lm.tokenizer, adapter.dimensions().vocab)
    elif fmt == "nemotron-nas":
        nemotron_nas.check_exportable(adapter)


def export_bytes(fmt: str, num_params: int, weight_bytes: int, gguf_type: str) -> float:
    """About how many bytes an engine export adds beside the checkpoint (for the free-space check)."""
    if fmt == "gguf":
        return num_params * gguf.GGUF_BYTES_PER_WEIGHT[gguf_type]
    return weight_bytes if fmt == "nemotron-nas" else 0


def write_export(fmt: str, adapter: ModelAdapter, lm: LoadedModel, path: Path, gguf_type: str = "f32",
                 name: str = "pruned", overwrite: bool = False) -> dict[str, Any]:
    """Write ``adapter.model`` (as pruned) in engine format ``fmt`` to ``path``; return what was written."""
    if fmt == "gguf":
        source = lm.source.get("gguf")
        return gguf.write_gguf(adapter, path, Path(source) if source else None, gguf_type, name=name,
                               overwrite=overwrite, tokenizer=lm.tokenizer)
    if fmt == "nemotron-nas":
        return nemotron_nas.write_nemotron_nas(adapter, lm.tokenizer, path, name=name, overwrite=overwrite)
    raise SecateursError(f"format '{fmt}' is not an engine format")


def source_gguf(directory: Path) -> str | None:
    """The GGUF file a pruned directory's model was loaded from (its tokenizer goes into a GGUF export)."""
    report = directory / "report.json"
    if not report.is_file():
        return None
    try:
        return json.loads(report.read_text()).get("model", {}).get("gguf")
    except ValueError:
        return None


def export(directory: str | Path, fmt: str, out: str | Path, gguf_type: str = "f32",
           overwrite: bool = False) -> dict[str, Any]:
    """Export the pruned model in ``directory`` (written by ``secateurs prune``) to ``out``."""
    directory = Path(directory)
    check_format(fmt, gguf_type)
    check_output_path(out, overwrite)  # before the model loads
    if not (directory / "config.json").is_file() or not pruning_record(directory):
        raise SecateursError(f"{directory} was not written by `secateurs prune` (no secateurs_pruning in its config.json)")
    if fmt == "hf":
        with atomic_directory(out, overwrite=overwrite) as tmp:
            shutil.copytree(directory, tmp, dirs_exist_ok=True)
        return {"format": "hf", "path": str(out)}
    saved = json.loads((directory / "config.json").read_text())
    dtype = saved.get("dtype") or saved.get("torch_dtype")  # export in the dtype the pruned model was saved in
    lm = load_model(str(directory), dtype=dtype if dtype in DTYPES else "auto", device="cpu")
    lm.source["gguf"] = source_gguf(directory)  # the original source's tokenizer, when it was a GGUF file
    adapter = ModelAdapter(lm.model)
    check_exportable(fmt, adapter, lm)
    record = write_export(fmt, adapter, lm, Path(out), gguf_type, name=directory.name, overwrite=overwrite)
    return {**record, "path": str(out)}
