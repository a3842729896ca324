"""Unstructured pruning end to end: load, calibrate, evaluate dense, prune, evaluate pruned, export."""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from .adapter import ModelAdapter
from .data import calibration_windows, domain_sets
from .errors import SecateursError
from .io import atomic_directory, check_output_path, write_json_atomic, write_text_atomic
from .loading import LoadedModel, load_model
from .methods.dpruner import save_importance
from .methods.unstructured import Calibration, UnstructuredOptions, sparsity_report
from .perplexity import perplexity
from .provenance import environment

GENERAL_IMPORTANCE_FILE = "general_importance.safetensors"
DEFAULT_GENERAL_CALIB = "c4"  # the papers' general calibration set


def sparsify(
    lm: LoadedModel,
    method: Any,
    method_name: str,
    options: UnstructuredOptions,
    calib: str | None = None,
    samples: int | None = 64,
    seqlen: int = 512,
    seed: int = 0,
    domain: str | None = None,
    domain_data: str | None = None,
    domain_samples: int | None = 64,
    eval_ppl: Sequence[str] = ("wikitext2",),
    eval_seqlen: int | None = None,
    eval_max_windows: int | None = 8,
    data_dir: str | os.PathLike | None = None,
    text_field: str = "text",
    batch_size: int = 4,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: list[str] | None = None,
    timings: dict[str, float] | None = None,
    peak_memory: Any = None,
) -> dict[str, Any]:
    """Prune ``lm`` in place with an unstructured ``method``; return the report (and write ``out``)."""
    if out is not None:
        check_output_path(out, overwrite)
    timings = dict(timings or {})
    adapter = ModelAdapter(lm.model)
    calib = calib or DEFAULT_GENERAL_CALIB

    start = time.perf_counter()
    data = Calibration()
    if method.uses_calibration:
        data.general = calibration_windows(calib, lm.tokenizer, seqlen, data_dir=data_dir, samples=samples,
                                           seed=seed, text_field=text_field)
    domain_eval = None
    if domain is not None:
        domain_calib, domain_eval = domain_sets(domain)
    if domain_data is not None:
        domain_calib = domain_data
    if method.uses_domain_data and domain is None and domain_data is None:
        raise SecateursError(f"{method_name} needs domain data: --domain healthcare|legal or --domain-data FILE")
    if method.uses_domain_data:
        data.domain = calibration_windows(domain_calib, lm.tokenizer, seqlen, data_dir=data_dir,
                                          samples=domain_samples, seed=seed, text_field=text_field)
    timings["calibration_data_s"] = time.perf_counter() - start

    evaluation_sets = list(eval_ppl) + ([domain_eval] if domain_eval and domain_eval not in eval_ppl else [])
    eval_windows = {spec: calibration_windows(spec, lm.tokenizer, eval_seqlen or seqlen, data_dir=data_dir,
                                              max_windows=eval_max_windows) for spec in evaluation_sets}
    start = time.perf_counter()
    dense = {spec: perplexity(lm.model, w, batch_size=batch_size, progress=progress) for spec, w in eval_windows.items()}
    timings["dense_evaluation_s"] = time.perf_counter() - start

    start = time.perf_counter()
    details = method.apply(adapter, data, options, progress=progress)
    timings["prune_s"] = time.perf_counter() - start
    general_importance = details.pop("_general_importance", None)

    start = time.perf_counter()
    evaluation = {}
    for spec, windows in eval_windows.items():
        pruned = perplexity(lm.model, windows, batch_size=batch_size, progress=progress)
        evaluation[spec] = {"dense_ppl": dense[spec]["ppl"], "pruned_ppl": pruned["ppl"], "protocol": pruned["protocol"],
                            "role": "domain" if spec == domain_eval else "general"}
    timings["evaluation_s"] = time.perf_counter() - start

    report: dict[str, Any] = {
        "kind": "unstructured",
        "method": method_name,
        "model": lm.source,
        "details": details,
        "sparsity": sparsity_report(adapter),
        "calibration": {
            "general": data.general.protocol if data.general is not None else None,
            "domain": data.domain.protocol if data.domain is not None else None,
            "domain_name": domain,
            "sequential": "layer by layer; each layer is calibrated on the outputs of the already-pruned "
                          "layers before it" if options.propagate == "pruned" else
                          "layer by layer; each layer is calibrated on dense outputs (--propagate dense)",
        },
        "evaluation": evaluation,
        "timings": timings,
        "peak_memory": peak_memory() if callable(peak_memory) else peak_memory,
        "recipe": {"method": method_name, **{k: v for k, v in options.__dict__.items() if k != "extra"}},
        "command": command,
        "environment": environment(),
    }
    if out is not None:
        from .report import render_markdown

        with atomic_directory(out, overwrite=overwrite) as tmp:
            setattr(lm.model.config, "secateurs_pruning",
                    {"format": "dense-zeros", "method": method_name, "pattern": details.get("pattern"),
                     "removed_blocks": []})
            lm.model.save_pretrained(tmp)
            lm.tokenizer.save_pretrained(tmp)
            if general_importance is not None:
                save_importance(general_importance, tmp / GENERAL_IMPORTANCE_FILE,
                                {"model": str(lm.source.get("spec")), "pattern": details.get("general_importance_pattern", "")})
                report["general_importance_file"] = GENERAL_IMPORTANCE_FILE
            write_json_atomic(tmp / "report.json", report)
            write_text_atomic(tmp / "report.md", render_markdown(report))
    return report
