"""Benchmark: the block search with many calibration windows: exact (windows in canonical or predicted
order) and successive halving (approximate), against the naive search's work.

Measured on a real model (default smollm2-135m, 64 windows of 64 tokens, batch 1): each search's block
evaluations (one block over one window), LM-head evaluations, wall time and chosen blocks. The naive
search's work is counted, not run (a full forward per candidate: every block left, every window; the
count is the report's, which the tests check against a naive run). The exact searches must choose the
same blocks with bit-identical scores (asserted); the approximate one is compared with them.

On tiny random models (every family, several seeds): how often successive halving chooses other blocks
than the exact search, and how much worse its choice's calibration loss is then.

    python benchmarks/search_windows.py --data-dir ../shared/data --out benchmarks/results/search_windows.json
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from secateurs import ModelAdapter, load_model
from secateurs.data import TokenWindows, token_windows
from secateurs.files import write_json_atomic
from secateurs.reporting.markdown import naive_cost
from secateurs.reporting.provenance import environment
from secateurs.structured.search import Halving, VariantEvaluator, block_units, greedy_search

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def search(adapter: ModelAdapter, windows: TokenWindows, k: int, batch: int, order_windows: bool = True,
           halving: Halving | None = None, progress: bool = True) -> dict:
    evaluator = VariantEvaluator(adapter, windows, batch_size=batch, order_windows=order_windows)
    start = time.perf_counter()
    steps = greedy_search(adapter, block_units(adapter), evaluator, max_steps=k, progress=progress, halving=halving)
    seconds = time.perf_counter() - start
    naive = naive_cost({"calibration": {"protocol": {"windows": len(windows)}},
                        "export": {"original_num_layers": adapter.num_layers}, "steps": [asdict(s) for s in steps]})
    return {"seconds": seconds, "chosen": [s.unit for s in steps], "scores": [s.score for s in steps],
            "block_window_evals_per_step": [s.block_window_evals for s in steps],
            "naive_block_window_evals": naive["block_window_evals"], **evaluator.cost.as_dict(),
            "fewer_block_evals_than_naive": naive["block_window_evals"] / evaluator.cost.block_window_evals}


def measured(model: str, data_dir: str | None, k: int, k_canonical: int, windows: int, seqlen: int, batch: int,
             halving: Halving, out: Path, result: dict) -> dict:
    lm = load_model(model)
    adapter = ModelAdapter(lm.model)
    calib = token_windows("alpaca", lm.tokenizer, seqlen, data_dir=data_dir, samples=4 * windows, max_windows=windows)
    assert len(calib) == windows, f"only {len(calib)} windows"
    runs = result.setdefault("measured", {"model": model, "calibration": calib.protocol, "batch_size": batch, "runs": {}})["runs"]
    plans = {f"exact, predicted order, K={k}": (k, {}),
             f"exact, canonical order, K={k_canonical}": (k_canonical, dict(order_windows=False)),
             f"halving, K={k}": (k, dict(halving=halving))}
    for name, (steps, kwargs) in plans.items():
        print(name, flush=True)
        runs[name] = search(adapter, calib, steps, batch, **kwargs)
        write_json_atomic(out, result)  # a long benchmark keeps what it measured
    exact, canonical, approx = (runs[name] for name in plans)
    n = len(canonical["chosen"])
    assert exact["chosen"][:n] == canonical["chosen"] and exact["scores"][:n] == canonical["scores"], \
        "the predicted order changed the exact search's choices or scores"
    ordered_work = sum(exact["block_window_evals_per_step"][:n])
    return {
        "ordering_gain_first_steps": sum(canonical["block_window_evals_per_step"]) / ordered_work,
        "halving_same_blocks": approx["chosen"] == exact["chosen"],
        "halving_same_blocks_per_step": [a == b for a, b in zip(approx["chosen"], exact["chosen"])],
    }


def tiny_agreement(seeds: int, k: int, windows: int, halving: Halving) -> dict:
    """Successive halving vs the exact search on tiny random models (every family, ``seeds`` seeds)."""
    from conftest import FAMILIES, tiny_model

    rows, differ = [], 0
    for family in FAMILIES:
        for seed in range(seeds):
            model = tiny_model(family, seed=seed)
            ids = torch.randint(3, 259, (windows, 32), generator=torch.Generator().manual_seed(seed))
            calib = TokenWindows(ids, {"windows": windows, "seqlen": 32})
            adapter = ModelAdapter(model)
            exact = search(adapter, calib, k, 1, progress=False)
            approx = search(adapter, calib, k, 1, halving=halving, progress=False)
            same = approx["chosen"] == exact["chosen"]
            differ += not same
            rows.append({"family": family, "seed": seed, "same_blocks": same,
                         "final_score_excess": approx["scores"][-1] / exact["scores"][-1] - 1,
                         "fewer_block_evals_than_exact": exact["block_window_evals"] / approx["block_window_evals"]})
    return {"k": k, "windows": windows, "runs": len(rows), "different_blocks": differ,
            "largest_final_score_excess": max(r["final_score_excess"] for r in rows), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir")
    parser.add_argument("--k", type=int, default=4, help="steps of the exact (predicted order) and halving searches")
    parser.add_argument("--k-canonical", type=int, default=2, help="steps of the exact search in canonical order")
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--halving-windows", type=int, default=4)
    parser.add_argument("--halving-keep", type=float, default=0.5)
    parser.add_argument("--tiny-seeds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/search_windows.json")
    args = parser.parse_args()
    halving = Halving(args.halving_windows, args.halving_keep)
    out = Path(args.out)
    result: dict = {"halving": asdict(halving), "environment": environment()}
    result["tiny_models"] = tiny_agreement(args.tiny_seeds, 3, 16, halving)
    t = result["tiny_models"]
    print(f"tiny models: halving chose other blocks in {t['different_blocks']} of {t['runs']} runs "
          f"(largest final loss excess {100 * t['largest_final_score_excess']:.2f}%)", flush=True)
    result["summary"] = measured(args.model, args.data_dir, args.k, args.k_canonical, args.windows, args.seqlen,
                                 args.batch_size, halving, out, result)
    write_json_atomic(out, result)
    for name, run in result["measured"]["runs"].items():
        print(f"{name}: {run['seconds']:.0f} s, {run['block_window_evals']:,} block evaluations "
              f"({run['fewer_block_evals_than_naive']:.2f}x fewer than naive's {run['naive_block_window_evals']:,}), "
              f"chosen {run['chosen']}")
    print(f"summary: {result['summary']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
