"""The structured wing: calibrate, select blocks, compare dense and pruned, export a smaller model."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from pathlib import Path

from ..errors import SecateursError
from ..evaluation.speed import compare_speed
from ..models.adapter import Block
from ..models.checkpoint import save_pruned
from ..reporting.report import CalibrationPerplexity, StructuredReport, read_report
from ..structured.methods import Selection
from ..structured.search import removal_ratio
from .frame import PruneResult, Run, compare
from .spec import RunSpec

SPEED_REPEATS = 5  # interleaved dense/pruned rounds: differences of a few % need more than 3


def run_structured(spec: RunSpec) -> PruneResult:
    run = Run.start(spec)
    adapter, options = run.adapter, spec.options
    dense_params = adapter.total_num_params()
    with run.timed("search_s"):
        windows = run.calibration(None, spec.data.samples)
        if options.from_report is None:
            resume = {"checkpoint": run.checkpoint} if spec.method.resumable else {}  # a plugin's may not take it
            selection = spec.method.select(adapter, windows, options, progress=spec.progress, **resume)
        else:
            selection = steps_from_report(options.from_report, options.blocks, run)
    removed = [Block.parse(name) for name in selection.steps[-1].removed]
    if len(removed) == 2 * adapter.num_layers:
        raise SecateursError(f"{spec.method.name} would remove every block: no decoder layer would be left "
                             "(ask for fewer --blocks or a smaller --ratio)")
    skipped = lambda: adapter.skipped(removed)  # noqa: E731 - the pruned variant, as a context

    with run.timed("evaluation_s"):
        def calibration_ppl(blocks: list[Block]) -> float:
            return run.perplexities({"calib": windows}, lambda: adapter.skipped(blocks), progress=False)["calib"]["ppl"]

        calib_ppl = [math.exp(s.score) if selection.steps_score_calibration_nll else
                     calibration_ppl([Block.parse(n) for n in s.removed]) for s in selection.steps]
        dense_calib = calibration_ppl([])
        eval_windows = run.evaluation_windows()
        evaluation = compare(run.perplexities(eval_windows), run.perplexities(eval_windows, skipped))
    speeds = None
    if spec.evaluation.speed and adapter.ranks.main:  # one process measures, alone: the others only wait
        with run.timed("speed_s"):
            speeds = compare_speed(adapter.model, {"dense": contextlib.nullcontext, "pruned": skipped}, repeats=SPEED_REPEATS)

    recipe = None  # the run's options; a saved search re-applied keeps the recipe that made it
    if options.from_report is not None:
        recipe = {**selection.recipe, "from_report": str(options.from_report), "blocks": len(selection.steps)}
    report = run.report(
        StructuredReport,
        recipe=recipe,
        score=selection.score_name,
        search=selection.search,
        dense_params=dense_params,
        pruned_params=dense_params - sum(adapter.block_num_params(b) for b in removed),
        ratio=selection.steps[-1].ratio,
        removed_blocks=sorted(removed),
        removal_order=[s.unit for s in selection.steps],
        steps=selection.steps,
        calibration=CalibrationPerplexity(dense_calib, calib_ppl, windows.protocol),
        evaluation=evaluation,
        speed=speeds,
        search_cost=selection.cost,
    )
    if spec.output.path is None:
        adapter.remove_blocks(removed)
    else:
        def save_model(directory: Path) -> dict:
            return save_pruned(adapter, run.lm.tokenizer, removed, directory,
                               {"method": spec.method.name, "removal_order": report.removal_order})

        report = dataclasses.replace(report, outputs=run.write(report, save_model))
    return PruneResult(run.lm, removed, report, run.adapter.ranks.main)


def steps_from_report(path: str | os.PathLike, k: int | None, run: Run) -> Selection:
    """A saved search re-applied at level k, without searching again. The report must be of this model
    (its layer and parameter counts, and its file's sha256 where both have one); each step's ratio is
    computed again on this model."""
    saved = read_report(path)
    if not isinstance(saved, StructuredReport):
        raise SecateursError(f"{path} is the report of a {saved.kind} run: it holds no search to re-apply")
    adapter, source = run.adapter, run.lm.source
    mismatch = [f"{what} {a} there, {b} here" for what, a, b in (
        ("decoder layers:", saved.num_layers, adapter.num_layers),
        ("parameters:", saved.dense_params, adapter.total_num_params()),
        ("model sha256:", saved.model.get("sha256"), source.get("sha256"))) if a is not None and b is not None and a != b]
    if mismatch:
        raise SecateursError(f"{path} is the search of another model ({saved.model.get('spec')}; {mismatch[0]}): "
                             "re-apply a search only to the model it was made on")
    steps = saved.steps
    k = len(steps) if k is None else k
    if not 1 <= k <= len(steps):
        raise SecateursError(f"{path} holds levels 1..{len(steps)}; cannot re-apply --blocks {k}")
    dense = adapter.total_num_params()
    steps = [dataclasses.replace(s, ratio=removal_ratio(adapter, [Block.parse(n) for n in s.removed], dense))
             for s in steps[:k]]
    return Selection(steps, {}, saved.score, recipe=saved.recipe)
