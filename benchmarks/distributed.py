"""Benchmark: one process vs two under torchrun (gloo) on SmolLM2: wall time, the work each process did,
and whether the results are the same.

Both use the machine's cores: one process with ``--threads`` torch threads, or N processes with
``threads / N`` each; two processes run once per ``--divide`` (the search's candidates, or its batches
of windows). Each run writes its report to a temporary directory; the JSON keeps the chosen
blocks, the scores, each process's share of the search (block evaluations) and the wall time.

    python benchmarks/distributed.py --data-dir ../shared/data --out benchmarks/results/distributed.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(processes: int, threads: int, argv: list[str], divide: str = "auto") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   "-m", "secateurs", "--quiet", *argv, "--divide", divide, "--out", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // processes))}
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{processes} process(es) failed:\n{proc.stderr[-3000:]}")
        report = json.loads((out / "report.json").read_text())
    return {"processes": processes, "divide": divide, "search": report.get("search"), "threads_each": max(1, threads // processes), "wall_s": wall,
            "timings": report["timings"], "removal_order": report.get("removal_order"),
            "scores": [s["score"] for s in report.get("steps", [])], "search_cost": report.get("search_cost"),
            "evaluation": {k: [v["dense_ppl"], v["pruned_ppl"]] for k, v in report["evaluation"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--divide", default="candidates,windows", help="what the 2 processes divide, one run each")
    parser.add_argument("--out", default="benchmarks/results/distributed.json")
    args = parser.parse_args()
    argv = ["prune", args.model, "--method", "blockpruner", "--blocks", str(args.blocks), "--samples", str(args.samples),
            "--seqlen", str(args.seqlen), "--batch-size", "2", "--eval-ppl", "wikitext2", "--eval-max-windows", "8",
            "--device", "cpu", *(["--data-dir", args.data_dir] if args.data_dir else [])]
    results = []
    for processes, divide in [(1, "auto"), *((2, d) for d in args.divide.split(","))]:
        results.append(run(processes, args.threads, argv, divide))
        r = results[-1]
        print(f"{processes} process(es), {r['search']}: {r['wall_s']:.0f} s wall, search {r['timings']['search_s']:.0f} s, "
              f"removed {r['removal_order']}", flush=True)
    same = all(r["removal_order"] == results[0]["removal_order"] and r["scores"] == results[0]["scores"] for r in results)
    print(f"same blocks and scores: {same}")
    Path(args.out).write_text(json.dumps({"command": argv, "results": results, "same_blocks_and_scores": same},
                                         indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
