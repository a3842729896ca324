"""Benchmark: the methods on a 1.5B real model on this CPU: time and peak memory, with and without offload.

Each run is its own process (its peak resident set, ``ru_maxrss``, is its own) and goes through
``secateurs.prune`` as a user's run would: load (from the dequantised cache after the first time),
calibrate, prune, write nothing. The sequential methods run twice, with the layer cache in memory
(``--offload none``) and with the weights streamed from their files and the cache on disk (``--offload
disk``); the pruned weights of the two are compared by a
digest of every prunable matrix (equal digests = bit-identical results).

    python benchmarks/large_model.py --data-dir ../shared/data --out benchmarks/results/large_model.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import hashlib, json, resource, sys, time
from secateurs import DataSpec, EvalSpec, prune
from secateurs.models.adapter import ModelAdapter
from secateurs.reporting.report import report_json
settings = json.loads(sys.argv[1])
start = time.perf_counter()
result = prune(settings["model"], settings["method"], settings["options"],
               data=DataSpec(calib=settings["calib"], samples=settings["samples"], seqlen=settings["seqlen"],
                             domain=settings.get("domain"), domain_samples=settings.get("domain_samples", 16),
                             data_dir=settings["data_dir"]),
               evaluation=EvalSpec(ppl=["wikitext2"] if settings.get("eval_windows") else [],
                                   max_windows=settings.get("eval_windows") or settings["domain_eval_windows"]),
               progress=False)
digest = hashlib.sha256()
adapter = ModelAdapter(result.model.model, result.model.weights)  # streamed weights: read one layer at a time
for index in range(adapter.num_layers):
    with adapter.weights.onloaded(adapter.layers[index]):
        for name, linear in sorted(adapter.layer_linears(index).items()):
            digest.update(linear.weight.detach().contiguous().numpy().tobytes())
report = report_json(result.report)
print("RESULT " + json.dumps({
    "wall_s": time.perf_counter() - start, "timings": report.get("timings"),
    "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    "weights_digest": digest.hexdigest(), "parameters": adapter.total_num_params(),
    "evaluation": {k: {"dense_ppl": v["dense_ppl"], "pruned_ppl": v["pruned_ppl"]} for k, v in report.get("evaluation", {}).items()},
    "removed": report.get("removal_order"), "sparsity": report.get("sparsity", {}).get("over_pruned_matrices"),
}))
"""


def run(settings: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{settings['name']} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    print(f"{settings['name']}: {result['wall_s']:.0f} s, peak RSS {result['peak_rss_gib']:.2f} GiB", flush=True)
    return {**settings, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--data-dir")
    parser.add_argument("--samples", type=int, default=8, help="calibration documents (C4 for the sequential methods)")
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--search-samples", type=int, default=2, help="BlockPruner's Alpaca documents")
    parser.add_argument("--search-seqlen", type=int, default=64)
    parser.add_argument("--methods", default="wanda,sparsegpt,dpruner,blockpruner")
    parser.add_argument("--offloads", default="none,disk", help="the sequential methods' --offload values to run")
    parser.add_argument("--dpruner-batch-size", type=int, default=2, help="D-Pruner's windows per backward pass")
    parser.add_argument("--eval-windows", type=int, default=0,
                        help="also run each sequential method with disk offload and dense/pruned WikiText-2 PPL")
    parser.add_argument("--domain-eval-windows", type=int, default=4,
                        help="D-Pruner: windows of the domain's held-out set for dense / pruned perplexity")
    parser.add_argument("--out", default="benchmarks/results/large_model.json")
    args = parser.parse_args()
    # D-Pruner's run also compares dense and pruned perplexity on its domain's held-out set: a few windows
    common = {"model": args.model, "data_dir": args.data_dir, "domain_eval_windows": args.domain_eval_windows}
    sequential = {"calib": "c4", "samples": args.samples, "seqlen": args.seqlen}
    configs = []
    for method in args.methods.split(","):
        if method in ("wanda", "sparsegpt"):
            configs += [{"name": f"{method} 50%, --offload {o}", "method": method, **sequential,
                         "options": {"sparsity": 0.5, "offload": o}} for o in args.offloads.split(",")]
            if args.eval_windows:  # the whole run as a user runs it: dense and pruned perplexity included
                configs.append({"name": f"{method} 50%, --offload disk, WikiText-2 PPL on {args.eval_windows} windows",
                                "method": method, **sequential, "options": {"sparsity": 0.5, "offload": "disk"},
                                "eval_windows": args.eval_windows})
        elif method == "dpruner":  # offload: its general step's layer cache and its original weights
            configs += [{"name": "dpruner 50% (one pass)" + (f", --offload {o}" if o != "none" else ""), "method": method,
                         **sequential, "domain": "healthcare", "domain_samples": args.samples,
                         "options": {"sparsity": 0.5, "steps": 0, "update_batch_size": args.dpruner_batch_size,
                                     "offload": o}} for o in args.offloads.split(",")]
        elif method == "blockpruner":
            configs.append({"name": "blockpruner, 2 blocks", "method": method, "calib": "alpaca",
                            "samples": args.search_samples, "seqlen": args.search_seqlen, "options": {"blocks": 2}})
    start = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for config in configs:  # the file is rewritten after every run, so a long benchmark keeps what it measured
        results.append(run({**common, **config}))
        out.write_text(json.dumps({"results": results, "total_s": time.perf_counter() - start}, indent=2))
    for method in ("wanda", "sparsegpt"):
        pair = [r for r in results if r.get("method") == method and not r.get("eval_windows")]
        if len(pair) == 2:
            same = pair[0]["weights_digest"] == pair[1]["weights_digest"]
            print(f"{method}: --offload none and disk give {'bit-identical' if same else 'DIFFERENT'} weights")
            results.append({"name": f"{method}: offload none vs disk", "bit_identical": same})
    out.write_text(json.dumps({"results": results, "total_s": time.perf_counter() - start}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
