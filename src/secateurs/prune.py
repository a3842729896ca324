"""``prune``: load, calibrate, select, evaluate, export and report, for the structured methods."""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .adapter import Block, ModelAdapter
from .data import calibration_windows, domain_sets
from .errors import SecateursError
from .export import save_pruned
from .io import atomic_directory, check_output_path, write_json_atomic, write_text_atomic
from .loading import LoadedModel, load_model
from .methods import StructuredOptions, UnstructuredOptions, get_method
from .methods.structured import Selection
from .perplexity import DEFAULT_BATCH_SIZE, perplexity
from .provenance import environment
from .plots import plot_structured
from .report import render_markdown
from .search import SearchStep
from .speed import compare_speed
from .sparsify import sparsify


SPEED_REPEATS = 5  # interleaved dense/pruned rounds: differences of a few % need more than 3


@dataclass
class PruneResult:
    model: LoadedModel
    removed: list[Block]
    report: dict[str, Any]


def _peak_memory_mb() -> dict[str, float]:
    peak = {"cpu_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peak["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def _steps_from_report(path: str | os.PathLike, k: int | None) -> tuple[list[SearchStep], dict[str, Any]]:
    """Re-apply a saved search at level k without searching again."""
    try:
        saved = json.loads(Path(path).read_text())
        steps = [SearchStep(**s) for s in saved["steps"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SecateursError(f"cannot read a saved search from {path}: {exc}") from exc
    if k is None:
        k = len(steps)
    if not 1 <= k <= len(steps):
        raise SecateursError(f"{path} holds levels 1..{len(steps)}; cannot re-apply --blocks {k}")
    return steps[:k], saved


def prune(
    model: str | LoadedModel,
    method: str = "blockpruner",
    calib: str | None = None,
    samples: int | None = 64,
    seqlen: int = 512,
    seed: int = 0,
    blocks: int | None = None,
    ratio: float | None = None,
    block_type: str = "mix",
    unit: str = "layer",
    naive: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    eval_ppl: Sequence[str] = ("wikitext2",),
    eval_seqlen: int | None = None,
    eval_max_windows: int | None = None,
    from_report: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    text_field: str = "text",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    dtype: str = "auto",
    device: str = "auto",
    progress: bool = True,
    command: list[str] | None = None,
    unstructured: UnstructuredOptions | None = None,
    domain: str | None = None,
    domain_data: str | None = None,
    domain_samples: int | None = 64,
    speed: bool = False,
) -> PruneResult:
    """Prune ``model``; optionally export it with its report to ``out``.

    Structured methods remove blocks (``blocks`` / ``ratio``); unstructured ones zero weights
    (``unstructured`` options: sparsity or N:M; D-Pruner also uses ``domain`` / ``domain_data``).
    ``speed`` also measures decode tokens/s of the dense and the pruned model (structured methods).
    """
    chosen = get_method(method)
    if chosen.kind == "unstructured":
        if speed:
            raise SecateursError(f"{method} zeros weights, which dense kernels run no faster: drop --speed "
                                 "(secateurs eval DIR --speed measures any model)")
        if unstructured is None:
            raise SecateursError(f"{method} is unstructured: say --sparsity S or --nm N:M")
        if domain is not None:
            domain_sets(domain)  # fail on an unknown domain before loading anything
    elif from_report is None:
        options = StructuredOptions(blocks, ratio, block_type, unit, naive, batch_size)
    if out is not None:
        check_output_path(out, overwrite)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    lm = load_model(model, dtype=dtype, device=device) if isinstance(model, str) else model
    timings["load_s"] = time.perf_counter() - start
    if chosen.kind == "unstructured":
        report = sparsify(lm, chosen, method, unstructured, calib=calib, samples=samples, seqlen=seqlen, seed=seed,
                          domain=domain, domain_data=domain_data, domain_samples=domain_samples, eval_ppl=eval_ppl,
                          eval_seqlen=eval_seqlen, eval_max_windows=eval_max_windows, data_dir=data_dir,
                          text_field=text_field, batch_size=batch_size, out=out, overwrite=overwrite,
                          progress=progress, command=command, timings=timings, peak_memory=_peak_memory_mb)
        return PruneResult(lm, [], report)
    calib = calib or "alpaca"
    adapter = ModelAdapter(lm.model)
    dense_params = adapter.total_num_params()

    start = time.perf_counter()
    windows = calibration_windows(calib, lm.tokenizer, seqlen, data_dir=data_dir, samples=samples, seed=seed,
                                  text_field=text_field)
    if from_report is None:
        selection = chosen.select(adapter, windows, options, progress=progress)
        recipe = {"method": method, **asdict(options)}
    else:
        steps, saved = _steps_from_report(from_report, blocks)
        selection = Selection(steps, {}, saved.get("score", "saved"))
        recipe = {**saved.get("recipe", {}), "from_report": str(from_report), "blocks": len(steps)}
    timings["search_s"] = time.perf_counter() - start
    removed = [Block.parse(name) for name in selection.steps[-1].removed]

    start = time.perf_counter()
    calib_ppl = [
        math.exp(s.score) if selection.steps_score_calibration_nll else _ppl_without(adapter, windows, s, batch_size)
        for s in selection.steps
    ]
    dense_calib = perplexity(lm.model, windows, batch_size=batch_size, progress=False)["ppl"]
    evaluation: dict[str, Any] = {}
    for spec in eval_ppl:
        ev_windows = calibration_windows(spec, lm.tokenizer, eval_seqlen or seqlen, data_dir=data_dir,
                                         max_windows=eval_max_windows)
        dense = perplexity(lm.model, ev_windows, batch_size=batch_size, progress=progress)
        with adapter.skipped(removed):
            pruned = perplexity(lm.model, ev_windows, batch_size=batch_size, progress=progress)
        evaluation[spec] = {"dense_ppl": dense["ppl"], "pruned_ppl": pruned["ppl"], "protocol": pruned["protocol"]}
    timings["evaluation_s"] = time.perf_counter() - start
    speeds = None
    if speed:
        start = time.perf_counter()
        speeds = compare_speed(lm.model, {"dense": contextlib.nullcontext,
                                          "pruned": lambda: adapter.skipped(removed)}, repeats=SPEED_REPEATS)
        timings["speed_s"] = time.perf_counter() - start

    report = {
        "kind": "structured",
        "method": method,
        "score": selection.score_name,
        "model": lm.source,
        "dense_params": dense_params,
        "pruned_params": dense_params - sum(adapter.block_num_params(b) for b in removed),
        "ratio": selection.steps[-1].ratio,
        "removed_blocks": [b.name for b in sorted(removed)],
        "removal_order": [s.unit for s in selection.steps],
        "steps": [asdict(s) for s in selection.steps],
        "calibration": {"dense_ppl": dense_calib, "ppl_per_step": calib_ppl, "protocol": windows.protocol},
        "evaluation": evaluation,
        "speed": speeds,
        "search_cost": selection.cost,
        "timings": timings,
        "peak_memory": _peak_memory_mb(),
        "recipe": recipe,
        "command": command,
        "environment": environment(),
    }
    if out is not None:
        with atomic_directory(out, overwrite=overwrite) as tmp:
            report["export"] = save_pruned(adapter, lm.tokenizer, removed, tmp,
                                           {"method": method, "removal_order": report["removal_order"]})
            report["figures"] = plot_structured(report, tmp)
            write_json_atomic(tmp / "report.json", report)
            write_text_atomic(tmp / "report.md", render_markdown(report))
    else:
        adapter.remove_blocks(removed)
    return PruneResult(lm, removed, report)


def _ppl_without(adapter: ModelAdapter, windows, step: SearchStep, batch_size: int) -> float:
    with adapter.skipped([Block.parse(n) for n in step.removed]):
        return perplexity(adapter.model, windows, batch_size=batch_size, progress=False)["ppl"]
