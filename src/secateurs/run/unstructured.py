"""The unstructured wing: calibrate, evaluate dense, zero weights, evaluate pruned, export dense zeros."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..models.checkpoint import save_dense_zeros
from ..reporting.report import CalibrationProtocols, UnstructuredReport
from ..unstructured.methods import Calibration, sparsity_report
from .frame import PruneResult, Run, compare
from .spec import RunSpec


def run_unstructured(spec: RunSpec) -> PruneResult:
    run = Run.start(spec)
    try:
        return _prune(run)
    except BaseException:
        run.adapter.weights.close()  # streamed weights: their work directory goes now, not at exit
        raise


def _prune(run: Run) -> PruneResult:
    spec = run.spec
    method, options, data = spec.method, spec.options, spec.data
    domain_calib, domain_eval = spec.domain_sets()
    with run.timed("calibration_data_s"):
        calibration = Calibration()
        if method.uses_calibration:
            calibration.general = run.calibration(None, data.samples)
        if method.uses_domain_data:
            calibration.domain = run.calibration(domain_calib, data.domain_samples)

    eval_windows = run.evaluation_windows(extra=(domain_eval,) if domain_eval else ())
    with run.timed("dense_evaluation_s"):
        dense = run.perplexities(eval_windows)
    with run.timed("prune_s"):
        result = method.apply(run.adapter, calibration, options, progress=spec.progress, checkpoint=run.checkpoint)
    with run.timed("evaluation_s"):
        evaluation = compare(dense, run.perplexities(eval_windows))
    for name, comparison in evaluation.items():
        comparison.role = "domain" if name == domain_eval else "general"

    report = run.report(
        UnstructuredReport,
        details={**result.details, "notes": result.notes},
        sparsity=sparsity_report(run.adapter),
        calibration=CalibrationProtocols(
            general=calibration.general.protocol if calibration.general is not None else None,
            domain=calibration.domain.protocol if calibration.domain is not None else None,
            domain_name=data.domain,
            sequential="layer by layer; each layer is calibrated on the outputs of the already-pruned "
                       "layers before it" if options.propagate == "pruned" else
                       "layer by layer; each layer is calibrated on dense outputs (--propagate dense)",
        ),
        evaluation=evaluation,
    )
    if spec.output.path is not None:
        record = {"method": method.name, "pattern": result.details.get("pattern")}
        def save_model(directory: Path) -> None:
            save_dense_zeros(run.lm, directory, record)  # config.json holds the record; the report does not

        report = dataclasses.replace(report, outputs=run.write(report, save_model, result.artifacts))
    return PruneResult(run.lm, [], report, run.adapter.ranks.main)
