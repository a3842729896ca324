"""Benchmark: naive vs fast (prefix cache + exact early abandon) BlockPruner search.

Measured part: both searches on a real model (default smollm2-135m) on CPU: wall time, block
evaluations, and an assertion that both pick the same blocks. Analytic part: forward FLOPs of the two
searches at paper scale (Llama-2-7B K=17, Llama-2-13B K=24, 16 windows of 2048 tokens), counting the
prefix cache only (early abandon saves more, but how much depends on the data).

    python benchmarks/block_search.py --data-dir ../shared/data --out benchmarks/results/block_search.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from secateurs import ModelAdapter, load_model
from secateurs.data import token_windows
from secateurs.files import write_json_atomic
from secateurs.reporting.provenance import environment
from secateurs.structured.search import VariantEvaluator, block_units, greedy_search

PAPER_SHAPES = {
    # name: (hidden, intermediate, layers, vocab, K from the paper's tables)
    "llama-2-7b": (4096, 11008, 32, 32000, 17),
    "llama-2-13b": (5120, 13824, 40, 32000, 24),
}
PAPER_WINDOWS, PAPER_SEQLEN = 16, 2048


def block_flops_per_token(hidden: int, intermediate: int, kind: str, seqlen: int) -> float:
    """Forward FLOPs per token of one block (multi-head attention without GQA, as Llama-2-7B/13B)."""
    if kind == "mha":
        return 2 * 4 * hidden * hidden + 4 * seqlen * hidden / 2  # projections + causal QK^T and AV
    return 2 * 3 * hidden * intermediate


def analytic_cost(hidden: int, intermediate: int, layers: int, vocab: int, k: int) -> dict[str, float]:
    """Forward FLOPs of K greedy steps, naive vs prefix-cached, assuming deep MHA blocks go first."""
    tokens = PAPER_WINDOWS * PAPER_SEQLEN
    order = [(i, kind) for i in range(layers) for kind in ("mha", "mlp")]  # forward order
    cost = {p: block_flops_per_token(hidden, intermediate, p[1], PAPER_SEQLEN) for p in order}
    head = 2 * hidden * vocab
    removed: set = set()
    naive = fast = 0.0
    removal_sequence = [(i, "mha") for i in reversed(range(layers))][:k]
    for step in range(k):
        remaining = [p for p in order if p not in removed]
        for candidate in remaining:
            others = [p for p in remaining if p != candidate]
            naive += sum(cost[p] for p in others) + head
            fast += sum(cost[p] for p in others if order.index(p) > order.index(candidate)) + head
        fast += sum(cost[p] for p in remaining) + head  # the step's capture run
        removed.add(removal_sequence[step])
    return {"naive_tflops": naive * tokens / 1e12, "fast_tflops": fast * tokens / 1e12, "speedup": naive / fast}


def measured(model: str, data_dir: str | None, k: int, samples: int, seqlen: int, windows: int, batch: int) -> dict:
    lm = load_model(model)
    adapter = ModelAdapter(lm.model)
    calib = token_windows("alpaca", lm.tokenizer, seqlen, data_dir=data_dir, samples=samples, max_windows=windows)
    runs = {}
    for mode in ("naive", "fast"):
        evaluator = VariantEvaluator(adapter, calib, batch_size=batch, fast=mode == "fast")
        start = time.perf_counter()
        steps = greedy_search(adapter, block_units(adapter), evaluator, max_steps=k)
        runs[mode] = {"seconds": time.perf_counter() - start, "chosen": [s.unit for s in steps],
                      "scores": [s.score for s in steps], **evaluator.cost.as_dict()}
    assert runs["naive"]["chosen"] == runs["fast"]["chosen"], "fast search chose different blocks"
    assert runs["naive"]["scores"] == runs["fast"]["scores"], "fast search scores differ"
    return {
        "model": model, "k": k, "calibration": calib.protocol, "batch_size": batch, "runs": runs,
        "speedup_wall": runs["naive"]["seconds"] / runs["fast"]["seconds"],
        "speedup_block_evals": runs["naive"]["block_window_evals"] / runs["fast"]["block_window_evals"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/block_search.json")
    args = parser.parse_args()
    result = {
        "measured": measured(args.model, args.data_dir, args.k, args.samples, args.seqlen, args.windows, args.batch_size),
        "analytic": {name: {"k": s[4], **analytic_cost(*s)} for name, s in PAPER_SHAPES.items()},
        "environment": environment(),
    }
    write_json_atomic(Path(args.out), result)
    m = result["measured"]
    print(f"measured on {args.model}, K={args.k}: naive {m['runs']['naive']['seconds']:.1f}s, "
          f"fast {m['runs']['fast']['seconds']:.1f}s ({m['speedup_wall']:.2f}x wall, "
          f"{m['speedup_block_evals']:.2f}x fewer block evaluations), same blocks: {m['runs']['fast']['chosen']}")
    for name, a in result["analytic"].items():
        print(f"analytic {name} K={a['k']}: naive {a['naive_tflops']:.0f} TFLOP, fast {a['fast_tflops']:.0f} TFLOP, "
              f"{a['speedup']:.2f}x (prefix cache only)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
