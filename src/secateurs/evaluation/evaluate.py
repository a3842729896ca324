"""``evaluate``: perplexity, tasks and speed of one model, with the protocol of every number, and the
averages the suites declare (:mod:`.suites`) over the tasks run."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

from ..data import token_windows
from ..defaults import BATCH_SIZE, PAPER_SEQLEN
from ..distributed import Ranks
from ..errors import SecateursError
from ..options import build
from ..models.loading import LoadedModel, load_model, resolve_device
from .perplexity import perplexity
from .scoring import run_task
from ..reporting.provenance import environment
from .speed import measure_speed
from .suites import averages
from .tasks import load_task
from ..resources import dtype_name

BACKENDS = ("builtin", "lm-eval")


@dataclass
class EvalSettings:
    """How to evaluate: windows for perplexity, rows of tasks, speed, the backend.

    Validated on creation.
    """

    seqlen: int = PAPER_SEQLEN  # perplexity window length
    max_windows: int | None = None
    batch_size: int = BATCH_SIZE
    data_dir: str | os.PathLike | None = None
    text_field: str = "text"
    limit: int | None = None  # first N rows of each task (the harness's rule)
    sample: int | None = None  # or a seeded subset of N rows
    seed: int = 0
    speed: dict[str, int] | None = None  # prefill/decode settings of a speed measurement
    backend: str = "builtin"  # or lm-eval (lm-evaluation-harness's HFLM scores the tasks)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise SecateursError(f"unknown backend '{self.backend}'; choose builtin or lm-eval")
        if self.batch_size < 1:
            raise SecateursError(f"batch size must be at least 1, got {self.batch_size}")


def evaluate(
    model: LoadedModel | str,
    ppl: Sequence[str] = ("wikitext2",),
    *,
    tasks: Sequence[str] = (),
    settings: EvalSettings | dict | None = None,
    log_samples: list[dict] | None = None,
    dtype: str = "auto",
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a model (or a model spec, loaded first); returns a JSON-ready result with protocols.

    ``ppl``: token perplexity datasets; ``tasks``: zero-shot / domain tasks; ``settings``: windows,
    rows (``limit`` = first N, ``sample`` = a seeded subset), speed and backend; ``log_samples``
    receives every item's log-likelihoods and prediction.
    """
    s = build(EvalSettings, settings)
    if not ppl and not tasks and s.speed is None:
        raise SecateursError("nothing to evaluate: name a perplexity dataset, a task or --speed")
    task_data = {name: load_task(name, s.data_dir, limit=s.limit, sample=s.sample, seed=s.seed) for name in tasks}
    timings: dict[str, float] = {}
    if isinstance(model, str):
        start = time.perf_counter()
        model = load_model(model, dtype=dtype, device=str(Ranks.device_of_process(resolve_device(device))))
        timings["load_s"] = time.perf_counter() - start
    ranks = Ranks.from_environment(model.device)  # under torchrun, the windows and rows divide over the processes
    results: dict[str, Any] = {}
    for spec in ppl:
        start = time.perf_counter()
        windows = token_windows(
            spec, model.tokenizer, s.seqlen, data_dir=s.data_dir, max_windows=s.max_windows, text_field=s.text_field
        )
        results[spec] = perplexity(model.model, windows, batch_size=s.batch_size, progress=progress and ranks.main,
                                   ranks=ranks)
        timings[f"ppl_{spec}_s"] = time.perf_counter() - start
    task_results: dict[str, Any] = {}
    scorer = None
    if s.backend == "lm-eval" and task_data:
        from .lm_eval_bridge import lm_eval_scorer

        scorer = lm_eval_scorer(model.model, model.tokenizer)
    for name, data in task_data.items():
        start = time.perf_counter()
        batching = "lm-eval HFLM" if scorer else "choices of one row together; shared context once"
        task_results[name] = {**run_task(model.model, model.tokenizer, data, progress, log_samples, scorer, ranks),
                              "protocol": {**data.protocol, "batching": batching, "backend": s.backend}}
        timings[f"task_{name}_s"] = time.perf_counter() - start
    result: dict[str, Any] = {
        "model": model.source,
        "perplexity": results,
        "tasks": task_results,
        "dtype": dtype_name(model.model),
        "batch_size": s.batch_size,
        "processes": ranks.world,
    }
    for average in averages():  # every declared average whose tasks were run
        value = average.compute(task_results)
        if value is not None:
            result[average.key] = value
    if s.speed is not None and ranks.main:  # one process measures: several would share the device
        result["speed"] = measure_speed(model.model, **s.speed)
    result.update(timings=timings, environment=environment())
    return result
