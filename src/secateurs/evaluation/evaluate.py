"""``evaluate``: perplexity, tasks and speed of one model, with the protocol of every number, and the
averages the suites declare (:mod:`.suites`) over the tasks run."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

from ..data import check_source, token_windows
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
from ..resume import Checkpoint

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
        if self.seed < 0:
            raise SecateursError(f"--seed must be 0 or more, got {self.seed}")


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
    checkpoint: Checkpoint | None = None,
) -> dict[str, Any]:
    """Evaluate a model (or a model spec, loaded first); returns a JSON-ready result with protocols.

    ``ppl``: token perplexity datasets; ``tasks``: zero-shot / domain tasks; ``settings``: windows,
    rows (``limit`` = first N, ``sample`` = a seeded subset), speed and backend; ``log_samples``
    receives every item's log-likelihoods and prediction. ``checkpoint`` (resume.py): each set and task
    is kept there once done, and one done by an earlier, killed evaluation is not run again.
    """
    s = build(EvalSettings, settings)
    if not ppl and not tasks and s.speed is None:
        raise SecateursError("nothing to evaluate: name a perplexity dataset, a task or --speed")
    for spec in ppl:  # every data set found (and readable) before the model loads
        check_source(spec, s.data_dir)
    task_data = {name: load_task(name, s.data_dir, limit=s.limit, sample=s.sample, seed=s.seed) for name in tasks}
    timings: dict[str, float] = {}
    if isinstance(model, str):
        start = time.perf_counter()
        model = load_model(model, dtype=dtype, device=str(Ranks.device_of_process(resolve_device(device))))
        timings["load_s"] = time.perf_counter() - start
    ranks = Ranks.from_environment(model.device)  # under torchrun, the windows and rows divide over the processes
    stage = checkpoint.stage("evaluation") if checkpoint is not None else None
    done = (stage.state if stage is not None else None) or {"perplexity": {}, "tasks": {}, "log_samples": {}, "timings": {}}

    def completed(kind: str, name: str, value: Any, seconds: float, log: list[dict] | None = None) -> None:
        """One set or task done: kept in the checkpoint, so that a killed evaluation does not redo it."""
        done[kind][name] = value
        done["timings"][f"{'ppl' if kind == 'perplexity' else 'task'}_{name}_s"] = seconds
        if log is not None:
            done["log_samples"][name] = log
        if stage is not None:
            stage.save_state(done)

    for spec in ppl:
        if spec in done["perplexity"]:
            continue
        start = time.perf_counter()
        windows = token_windows(
            spec, model.tokenizer, s.seqlen, data_dir=s.data_dir, max_windows=s.max_windows, text_field=s.text_field
        )
        positions = getattr(model.model.config, "max_position_embeddings", None)
        if positions and s.seqlen > positions:  # the data is long enough; the model is not
            raise SecateursError(f"--seqlen {s.seqlen} is longer than the {positions} positions the model was trained "
                                 "for (config max_position_embeddings)")
        completed("perplexity", spec, perplexity(model.model, windows, batch_size=s.batch_size,
                                                 progress=progress and ranks.main, ranks=ranks),
                  time.perf_counter() - start)
    scorer = None
    if s.backend == "lm-eval" and set(task_data) - set(done["tasks"]):
        from .lm_eval_bridge import lm_eval_scorer

        scorer = lm_eval_scorer(model.model, model.tokenizer)
    for name, data in task_data.items():
        if name in done["tasks"]:
            continue
        start = time.perf_counter()
        batching = "lm-eval HFLM" if scorer else "choices of one row together; shared context once"
        log = [] if log_samples is not None else None
        scored = run_task(model.model, model.tokenizer, data, progress, log, scorer, ranks)
        completed("tasks", name, {**scored, "protocol": {**data.protocol, "batching": batching, "backend": s.backend}},
                  time.perf_counter() - start, log)
    results = {spec: done["perplexity"][spec] for spec in ppl}
    task_results = {name: done["tasks"][name] for name in task_data}
    timings.update(done["timings"])
    if log_samples is not None:
        log_samples.extend(row for name in task_data for row in done["log_samples"].get(name, []))
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
