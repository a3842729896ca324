"""Benchmark: the unstructured methods on a real model: time, peak memory, general and domain PPL.

Each method runs in its own process (so peak memory is its own), at each pattern (50% and 2:4 by
default), on a fresh copy of the model, with the same general calibration (C4) and evaluation windows;
D-Pruner uses the domain's calibration text as well. Also times D-Pruner's one-pass importance against
a plain forward + backward over the same tokens.

    python benchmarks/unstructured.py --data-dir ../shared/data --out benchmarks/results/unstructured.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from secateurs.files import write_json_atomic
from secateurs.reporting.provenance import environment

METHODS = ["magnitude", "wanda", "sparsegpt", "dpruner"]


def run_one(args: argparse.Namespace, method: str, pattern: str) -> dict:
    """One pruning run in a child process; returns the report's numbers."""
    code = f"""
import json, resource, sys, time
from secateurs import DataSpec, EvalSpec, prune
from secateurs.unstructured.masks import parse_nm
from secateurs.reporting.report import report_json
pattern = {pattern!r}
options = {{"nm": parse_nm(pattern)}} if ":" in pattern else {{"sparsity": float(pattern)}}
if {method!r} == "dpruner":
    options.update(steps={args.dpruner_steps}, update_batch_size={args.dpruner_batch_size})
data = DataSpec(calib=None if {method!r} == "magnitude" else "c4", samples={args.samples}, seqlen={args.seqlen}, domain={args.domain!r},
                domain_samples={args.domain_samples}, data_dir={args.data_dir!r})
evaluation = EvalSpec(ppl=["wikitext2"], seqlen={args.eval_seqlen}, max_windows={args.eval_max_windows})
report = report_json(prune({args.model!r}, {method!r}, options, data, evaluation, progress=False).report)
report.pop("environment")
print("RESULT " + json.dumps(report))
"""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{method} {pattern} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    ev = report["evaluation"]
    domain_key = next(k for k, v in ev.items() if v["role"] == "domain")
    return {
        "method": method, "pattern": pattern, "wall_s": time.perf_counter() - start,
        "prune_s": report["timings"]["prune_s"], "peak_rss_mb": report["peak_memory"]["cpu_max_rss_mb"],
        "sparsity_matrices": report["sparsity"]["over_pruned_matrices"],
        "sparsity_all": report["sparsity"]["over_all_parameters"],
        "general_ppl": ev["wikitext2"]["pruned_ppl"], "dense_general_ppl": ev["wikitext2"]["dense_ppl"],
        "domain_ppl": ev[domain_key]["pruned_ppl"], "dense_domain_ppl": ev[domain_key]["dense_ppl"],
        "details": {k: v for k, v in report["details"].items() if k != "penalty_to_gradient_ratio"},
        "penalty_to_gradient_ratio_mean": report["details"].get("penalty_to_gradient_ratio", {}).get("mean"),
        "calibration": report["calibration"], "evaluation_protocol": {k: v["protocol"] for k, v in ev.items()},
    }


def importance_cost(args: argparse.Namespace) -> dict:
    """D-Pruner's one-pass importance vs a plain forward + backward over the same windows."""
    import torch

    from secateurs import ModelAdapter, load_model
    from secateurs.data import token_windows, domain_sets
    from secateurs import DPrunerOptions
    from secateurs.unstructured.dpruner import domain_importance

    lm = load_model(args.model)
    adapter = ModelAdapter(lm.model)
    windows = token_windows(domain_sets(args.domain)[0], lm.tokenizer, args.seqlen, data_dir=args.data_dir,
                            samples=args.domain_samples, max_windows=args.dpruner_batch_size * 2)
    general = {n: torch.zeros_like(m.weight) for n, m in adapter.prunable_linears().items()}
    start = time.perf_counter()
    for ids in windows.input_ids.split(args.dpruner_batch_size):
        lm.model(input_ids=ids, labels=ids).loss.backward()
        lm.model.zero_grad(set_to_none=True)
    plain = time.perf_counter() - start
    start = time.perf_counter()
    domain_importance(adapter, windows, general, DPrunerOptions(sparsity=0.5, steps=0, update_batch_size=args.dpruner_batch_size), progress=False)
    ours = time.perf_counter() - start
    return {"windows": len(windows), "seqlen": windows.seqlen, "plain_forward_backward_s": plain,
            "one_pass_importance_s": ours, "ratio": ours / plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--patterns", default="0.5,2:4")
    parser.add_argument("--domain", default="healthcare")
    parser.add_argument("--samples", type=int, default=16, help="C4 documents for general calibration")
    parser.add_argument("--domain-samples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--eval-max-windows", type=int, default=8)
    parser.add_argument("--dpruner-steps", type=int, default=1)
    parser.add_argument("--dpruner-batch-size", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/unstructured.json")
    args = parser.parse_args()

    rows = []
    for pattern in args.patterns.split(","):
        for method in args.methods.split(","):
            row = run_one(args, method, pattern)
            rows.append(row)
            print(f"{method:<10} {pattern:<4} prune {row['prune_s']:7.1f} s, peak {row['peak_rss_mb']:6.0f} MB, "
                  f"wikitext2 {row['general_ppl']:9.3f}, {args.domain} {row['domain_ppl']:9.3f}", flush=True)
    cost = importance_cost(args)
    print(f"one-pass importance {cost['one_pass_importance_s']:.1f} s vs plain forward+backward "
          f"{cost['plain_forward_backward_s']:.1f} s ({cost['ratio']:.2f}x)")
    write_json_atomic(Path(args.out), {"rows": rows, "importance_cost": cost, "command": vars(args),
                                       "environment": environment()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
