"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from .data import NAMED_SETS, calibration_windows, resolve_data_dir
from .errors import SecateursError
from .loading import LoadedModel, load_model
from .perplexity import DEFAULT_BATCH_SIZE, perplexity
from .provenance import environment

PAPER_SEQLEN = 2048


def evaluate(
    model: LoadedModel | str,
    ppl: Sequence[str] = ("wikitext2",),
    seqlen: int = PAPER_SEQLEN,
    max_windows: int | None = None,
    data_dir: str | os.PathLike | None = None,
    text_field: str = "text",
    batch_size: int = DEFAULT_BATCH_SIZE,
    dtype: str = "auto",
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a model (or a model spec, loaded first); returns a JSON-ready result with protocols."""
    if not ppl:
        raise SecateursError("nothing to evaluate: name at least one perplexity dataset")
    if batch_size < 1:
        raise SecateursError(f"batch size must be at least 1, got {batch_size}")
    timings: dict[str, float] = {}
    if isinstance(model, str):
        start = time.perf_counter()
        model = load_model(model, dtype=dtype, device=device)
        timings["load_s"] = time.perf_counter() - start
    results: dict[str, Any] = {}
    for spec in ppl:
        start = time.perf_counter()
        windows = calibration_windows(
            spec, model.tokenizer, seqlen, data_dir=data_dir, max_windows=max_windows, text_field=text_field
        )
        results[spec] = perplexity(model.model, windows, batch_size=batch_size, progress=progress)
        timings[f"ppl_{spec}_s"] = time.perf_counter() - start
    return {
        "model": model.source,
        "perplexity": results,
        "timings": timings,
        "environment": environment(),
    }


def describe_data(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every named set and split, the files it reads and whether they exist in the data directory."""
    root = resolve_data_dir(data_dir)
    rows = []
    for named in NAMED_SETS.values():
        for split, entry in named.splits.items():
            paths = [root / rel for rel in entry.files] if root else []
            rows.append({
                "name": named.name,
                "split": split,
                "default": split == named.default_split,
                "description": f"{named.description}: {entry.description}",
                "files": [str(p) for p in paths] or list(entry.files),
                "available": bool(paths) and all(p.is_file() for p in paths),
            })
    return rows
