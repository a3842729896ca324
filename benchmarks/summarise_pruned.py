"""Collect the prune reports and task results of benchmarks/pubmedqa_pruned.sh into one table.

    python benchmarks/summarise_pruned.py RUNS OUT name [name ...]   (writes OUT/summary.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors import safe_open

from secateurs.files import write_json_atomic

LABELS = ("yes", "no", "maybe")


def _task(out: Path, name: str, task: str) -> dict | None:
    path = out / f"{name}.{task}.json"
    return json.loads(path.read_text())["tasks"][task] if path.exists() else None


def row(runs: Path, out: Path, name: str) -> dict:
    """One model's PPLs (from its prune report; the dense model's from any report) and task scores."""
    entry: dict = {"model": name}
    reports = [runs / name / "report.json"] if name != "dense" else sorted(runs.glob("*/report.json"))[:1]
    for path in (p for p in reports if p.exists()):
        report = json.loads(path.read_text())
        which = "dense_ppl" if name == "dense" else "pruned_ppl"
        entry.update(wikitext2_ppl=report["evaluation"]["wikitext2"][which],
                     healthcare_ppl=report["evaluation"]["healthcare:test"][which])
        if name != "dense":
            entry.update(prune_s=report["timings"]["prune_s"], pattern=report["details"].get("pattern"),
                         penalty_to_gradient_ratio=report["details"].get("penalty_to_gradient_ratio", {}).get("mean"))
    if (pubmedqa := _task(out, name, "pubmedqa")) is not None:
        entry.update(pubmedqa_acc=pubmedqa["metrics"]["acc"], pubmedqa_macro_f1=pubmedqa["metrics"]["macro_f1"],
                     pubmedqa_predicted=dict(zip(LABELS, pubmedqa.get("predicted", []))))
    if (meqsum := _task(out, name, "meqsum")) is not None:
        entry.update({f"meqsum_{k}": v for k, v in meqsum["metrics"].items()})
    return entry


def shared_pruned(runs: Path, name: str, reference: str) -> float | None:
    """Fraction of ``name``'s zeroed projection weights that ``reference`` zeroed too."""
    paths = [runs / n / "model.safetensors" for n in (name, reference)]
    if name in ("dense", reference) or not all(p.exists() for p in paths):
        return None
    both = ours = 0
    with safe_open(paths[0], "pt") as a, safe_open(paths[1], "pt") as b:
        for key in (k for k in a.keys() if k.endswith("_proj.weight")):
            mine = a.get_tensor(key) == 0
            both += (mine & (b.get_tensor(key) == 0)).sum().item()
            ours += mine.sum().item()
    return both / ours


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    runs, out, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    rows = [row(runs, out, n) for n in names]
    for r in rows:
        r["shared_with_wanda"] = shared_pruned(runs, r["model"], "wanda")
        r["shared_with_dpruner"] = shared_pruned(runs, r["model"], "dpruner")
    print("| model | WikiText-2 PPL | healthcare PPL | PubMedQA acc | macro-F1 | predicted yes/no/maybe "
          "| MeQSum R-1 | R-2 | R-L | mask shared with Wanda / D-Pruner |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---|")
    for r in rows:
        pred = "/".join(str(v) for v in r.get("pubmedqa_predicted", {}).values()) or "-"
        print(f"| {r['model']} | {_fmt(r.get('wikitext2_ppl'), '.2f')} | {_fmt(r.get('healthcare_ppl'), '.2f')} "
              f"| {_fmt(r.get('pubmedqa_acc'), '.2f')} | {_fmt(r.get('pubmedqa_macro_f1'), '.3f')} | {pred} "
              f"| {_fmt(r.get('meqsum_rouge1'), '.4f')} | {_fmt(r.get('meqsum_rouge2'), '.4f')} "
              f"| {_fmt(r.get('meqsum_rougeL'), '.4f')} "
              f"| {_fmt(r['shared_with_wanda'], '.3f')} / {_fmt(r['shared_with_dpruner'], '.3f')} |")
    write_json_atomic(out / "summary.json", {"rows": rows})


if __name__ == "__main__":
    main()
