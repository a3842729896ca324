"""Readable summaries (report.md) of the JSON reports."""

from __future__ import annotations

import json
from typing import Any


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_markdown(report: dict[str, Any]) -> str:
    """A short markdown summary of a structured pruning report."""
    calib = report["calibration"]
    proto = calib["protocol"]
    lines = [
        f"# {report['method']} on {report['model'].get('spec')}",
        "",
        f"Removed {len(report['removed_blocks'])} blocks: {report['dense_params']:,} -> "
        f"{report['pruned_params']:,} parameters (ratio {100 * report['ratio']:.2f}%, all parameters counted).",
        f"Score: {report['score']}.",
        "",
        "| step | removed | ratio % | calibration PPL |",
        "|---:|---|---:|---:|",
        f"| 0 | (dense) | 0.00 | {_fmt(calib['dense_ppl'])} |",
    ]
    for step, ppl in zip(report["steps"], calib["ppl_per_step"]):
        lines.append(f"| {step['step']} | {step['unit']} | {100 * step['ratio']:.2f} | {_fmt(ppl)} |")
    if report["evaluation"]:
        lines += ["", "| evaluation | dense PPL | pruned PPL |", "|---|---:|---:|"]
        for name, ev in report["evaluation"].items():
            p = ev["protocol"]
            lines.append(f"| {name} ({p['windows']} x {p['seqlen']} tokens) | {_fmt(ev['dense_ppl'])} | {_fmt(ev['pruned_ppl'])} |")
    lines += [
        "",
        f"Calibration: {proto['dataset']} ({proto['split']}), {proto['documents']} documents "
        f"(seed {proto['seed']}), {proto['windows']} windows x {proto['seqlen']} tokens, "
        f"token sha256 {proto['token_sha256'][:16]}...",
        f"Search cost: {json.dumps(report['search_cost'])}",
        f"Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings"].items()),
        f"Peak memory: " + ", ".join(f"{k} {v:.0f}" for k, v in report["peak_memory"].items()),
    ]
    if report.get("command"):
        lines += ["", "Re-run with:", "", "```", " ".join(report["command"]), "```"]
    return "\n".join(lines) + "\n"
