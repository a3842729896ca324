"""Benchmark: BlockPruner vs the structured baselines at matched parameter ratios on a real model.

BlockPruner runs first with --blocks K; every baseline then stops at the first step whose ratio
reaches BlockPruner's (the nearest ratio it can reach from above). For each: the ratio, calibration
PPL and WikiText-2 PPL, written as JSON and printed as a markdown table.

    python benchmarks/structured_comparison.py --data-dir ../shared/data --out benchmarks/results/structured_comparison.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from secateurs import DataSpec, EvalSpec, load_model, prune
from secateurs.files import write_json_atomic
from secateurs.reporting.provenance import environment
from secateurs.reporting.report import report_json

BASELINES = [
    ("shortgpt", {"unit": "layer"}),
    ("shortgpt", {"unit": "block"}),
    ("relative-magnitude", {"unit": "layer"}),
    ("one-shot-ppl", {}),
    ("layer-search", {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--eval-max-windows", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/structured_comparison.json")
    args = parser.parse_args()

    data = DataSpec(calib="alpaca", samples=args.samples, seqlen=args.seqlen, data_dir=args.data_dir)
    evaluation = EvalSpec(ppl=["wikitext2"], seqlen=args.eval_seqlen, max_windows=args.eval_max_windows)
    rows = []

    def run(method: str, **options) -> dict:
        lm = load_model(args.model)  # a fresh dense model each time: prune() removes blocks in place
        start = time.perf_counter()
        report = report_json(prune(lm, method, options, data, evaluation).report)
        row = {
            "method": method if "unit" not in options else f"{method} ({options['unit']})",
            "ratio": report["ratio"], "removed": report["removal_order"],
            "calibration_ppl": report["calibration"]["ppl_per_step"][-1],
            "dense_calibration_ppl": report["calibration"]["dense_ppl"],
            "wikitext2_ppl": report["evaluation"]["wikitext2"]["pruned_ppl"],
            "dense_wikitext2_ppl": report["evaluation"]["wikitext2"]["dense_ppl"],
            "seconds": time.perf_counter() - start,
            "calibration_protocol": report["calibration"]["protocol"],
            "evaluation_protocol": report["evaluation"]["wikitext2"]["protocol"],
        }
        rows.append(row)
        print(f"{row['method']}: ratio {100 * row['ratio']:.2f}%, calib PPL {row['calibration_ppl']:.3f}, "
              f"wikitext2 PPL {row['wikitext2_ppl']:.3f} ({row['seconds']:.0f} s)", flush=True)
        return row

    target = run("blockpruner", blocks=args.blocks)["ratio"]
    for method, options in BASELINES:
        run(method, ratio=target, **options)

    result = {"model": args.model, "target_ratio": target, "rows": rows, "command": vars(args),
              "environment": environment()}
    write_json_atomic(Path(args.out), result)
    dense = rows[0]
    print(f"\n| method | ratio % | calibration PPL | WikiText-2 PPL |\n|---|---:|---:|---:|\n"
          f"| dense | 0.00 | {dense['dense_calibration_ppl']:.3f} | {dense['dense_wikitext2_ppl']:.3f} |")
    for row in rows:
        print(f"| {row['method']} | {100 * row['ratio']:.2f} | {row['calibration_ppl']:.3f} | {row['wikitext2_ppl']:.3f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
