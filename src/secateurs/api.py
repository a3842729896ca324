"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from .data import NAMED_SETS, calibration_windows, resolve_data_dir
from .errors import SecateursError
from .loading import LoadedModel, load_model
from .perplexity import DEFAULT_BATCH_SIZE, perplexity
from .harness import run_task
from .provenance import environment
from .speed import measure_speed
from .tasks import PAPER_TASKS, TASKS, load_task

PAPER_SEQLEN = 2048


def paper_average(tasks: dict[str, Any]) -> dict[str, Any] | None:
    """The pruning papers' zero-shot average: acc_norm for PIQA/HellaSwag/ARC, acc for WinoGrande."""
    if not all(name in tasks for name in PAPER_TASKS):
        return None
    values = {name: tasks[name]["metrics"][TASKS[name].paper_metric] for name in PAPER_TASKS}
    return {"average": sum(values.values()) / len(values), "per_task": values,
            "metrics": {name: TASKS[name].paper_metric for name in PAPER_TASKS}}


def legalbench_average(tasks: dict[str, Any]) -> dict[str, Any] | None:
    """Macro average of acc and balanced acc over the LegalBench tasks that were run."""
    legal = {name: res["metrics"] for name, res in tasks.items() if name.startswith("legalbench:")}
    if not legal:
        return None
    return {"tasks": sorted(legal), **{key: sum(m[key] for m in legal.values()) / len(legal)
                                       for key in ("acc", "balanced_acc")}}


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
    tasks: Sequence[str] = (),
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    log_samples: list[dict] | None = None,
    speed: dict[str, int] | None = None,
    backend: str = "builtin",
) -> dict[str, Any]:
    """Evaluate a model (or a model spec, loaded first); returns a JSON-ready result with protocols.

    ``ppl``: token perplexity datasets; ``tasks``: zero-shot / domain tasks (``limit`` = first N rows,
    ``sample`` = a seeded subset); ``speed``: prefill/decode settings for a speed measurement.
    """
    if not ppl and not tasks and speed is None:
        raise SecateursError("nothing to evaluate: name a perplexity dataset, a task or --speed")
    if limit is not None and limit < 1:
        raise SecateursError(f"--limit must be at least 1, got {limit}")
    if backend not in ("builtin", "lm-eval"):
        raise SecateursError(f"unknown backend '{backend}'; choose builtin or lm-eval")
    task_data = {name: load_task(name, data_dir, limit=limit, sample=sample, seed=seed) for name in tasks}
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
    task_results: dict[str, Any] = {}
    scorer = None
    if backend == "lm-eval" and task_data:
        from .lm_eval_bridge import lm_eval_scorer

        scorer = lm_eval_scorer(model.model, model.tokenizer)
    for name, data in task_data.items():
        start = time.perf_counter()
        batching = "lm-eval HFLM" if scorer else "choices of one row together; shared context once"
        task_results[name] = {**run_task(model.model, model.tokenizer, data, progress, log_samples, scorer),
                              "protocol": {**data.protocol, "batching": batching, "backend": backend}}
        timings[f"task_{name}_s"] = time.perf_counter() - start
    result: dict[str, Any] = {
        "model": model.source,
        "perplexity": results,
        "tasks": task_results,
        "dtype": str(next(model.model.parameters()).dtype).replace("torch.", ""),
        "batch_size": batch_size,
    }
    average = paper_average(task_results)
    if average is not None:
        result["paper_average"] = average
    legal = legalbench_average(task_results)
    if legal is not None:
        result["legalbench_macro_average"] = legal
    if speed is not None:
        result["speed"] = measure_speed(model.model, **speed)
    result.update(timings=timings, environment=environment())
    return result


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
