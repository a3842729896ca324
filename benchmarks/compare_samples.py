"""Compare two `secateurs eval --log-samples` files item by item (e.g. builtin vs --backend lm-eval).

    python benchmarks/compare_samples.py ours.jsonl lm_eval.jsonl --out benchmarks/results/eval_agreement.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from secateurs.files import write_json_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--out")
    args = parser.parse_args()
    rows = {}
    for key, path in (("a", args.a), ("b", args.b)):
        rows[key] = {(r["task"], str(r["id"])): r for r in map(json.loads, Path(path).read_text().splitlines())}
    per_task: dict[str, dict] = defaultdict(lambda: {"items": 0, "same_prediction": 0, "same_prediction_norm": 0, "max_abs_ll_diff": 0.0})
    for key, a in rows["a"].items():
        b = rows["b"].get(key)
        if b is None or "loglikelihoods" not in a:
            continue
        t = per_task[key[0]]
        t["items"] += 1
        t["same_prediction"] += a["prediction"] == b["prediction"]
        t["same_prediction_norm"] += a["prediction_norm"] == b["prediction_norm"]
        t["max_abs_ll_diff"] = max(t["max_abs_ll_diff"], max(abs(x - y) for x, y in zip(a["loglikelihoods"], b["loglikelihoods"])))
    result = {"a": args.a, "b": args.b, "tasks": dict(per_task)}
    for task, t in per_task.items():
        print(f"{task}: {t['items']} items, same acc choice {t['same_prediction']}, same acc_norm choice "
              f"{t['same_prediction_norm']}, max |loglik diff| {t['max_abs_ll_diff']:.2e}")
    if args.out:
        write_json_atomic(Path(args.out), result)


if __name__ == "__main__":
    main()
