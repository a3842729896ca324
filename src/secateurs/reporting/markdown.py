"""Readable summaries of the reports: report.md and the tables ``secateurs prune`` prints."""

from __future__ import annotations

from typing import Any

from ..evaluation.suites import averages
from ..models.adapter import Block
from .report import Report, StructuredReport, UnstructuredReport


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_markdown(report: Report) -> str:
    """A short markdown summary of a pruning report (structured or unstructured)."""
    if isinstance(report, UnstructuredReport):
        return render_unstructured(report)
    return render_structured(report)


def _footer(report: Report) -> list[str]:
    lines = [
        "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report.timings.items()),
        "Peak memory: " + ", ".join(f"{k} {v:.0f}" for k, v in report.peak_memory.items()),
    ]
    if report.command:
        lines += ["", "Re-run with:", "", "```", " ".join(report.command), "```"]
    return lines


def _figures(report: Report) -> list[str]:
    return [line for figure in report.outputs.figures for line in ("", f"![{figure}]({figure})")]


def _protocol_line(label: str, proto: dict[str, Any]) -> str:
    seed = "" if proto["seed"] is None else f" (seed {proto['seed']})"
    return (f"{label}: {proto['dataset']} ({proto['split'] or 'file'}), {proto['documents']} documents{seed}, "
            f"{proto['windows']} windows x {proto['seqlen']} tokens, token sha256 {proto['token_sha256'][:16]}...")


def render_unstructured(report: UnstructuredReport) -> str:
    details, sparsity = report.details, report.sparsity
    lines = [
        f"# {report.method} on {report.model.get('spec')}",
        "",
        f"Pattern: {details['pattern']}; score: {details['score']}.",
        f"Achieved sparsity: {100 * sparsity['over_pruned_matrices']:.2f}% of the pruned matrices "
        f"({sparsity['prunable_params']:,} weights), {100 * sparsity['over_all_parameters']:.2f}% of all parameters.",
        f"Calibration protocol: {report.calibration.sequential}.",
        "",
        "| evaluation | role | dense PPL | pruned PPL |",
        "|---|---|---:|---:|",
    ]
    for name, ev in report.evaluation.items():
        p = ev.protocol
        lines.append(f"| {name} ({p['windows']} x {p['seqlen']} tokens) | {ev.role} | {_fmt(ev.dense_ppl)} | {_fmt(ev.pruned_ppl)} |")
    lines.append("")
    for label, protocol in (("General calibration", report.calibration.general),
                            ("Domain calibration", report.calibration.domain)):
        if protocol:
            lines.append(_protocol_line(label, protocol))
    if "penalty_to_gradient_ratio" in details:
        ratio = details["penalty_to_gradient_ratio"]
        lines += ["", f"D-Pruner penalty size: mean |penalty gradient| / |g| = {ratio['mean']:.3g} "
                      f"(largest matrix {ratio['max']:.3g}); general importance: {details['general_importance']}."]
    for note in details.get("notes", []):
        lines.append(f"Note: {note}.")
    lines += ["", "Per matrix sparsity (first layer):", ""]
    lines += [f"- {k}: {100 * v:.2f}%" for k, v in sparsity["first_layer"].items()]
    lines += _figures(report)
    lines += [""] + _footer(report)
    return "\n".join(lines) + "\n"


def render_structured(report: StructuredReport) -> str:
    """A short markdown summary of a structured pruning report."""
    calib = report.calibration
    proto = calib.protocol
    lines = [
        f"# {report.method} on {report.model.get('spec')}",
        "",
        f"Removed {removed_summary(report.removed_blocks)}: {report.dense_params:,} -> "
        f"{report.pruned_params:,} parameters (ratio {100 * report.ratio:.2f}%, all parameters counted).",
        f"Score: {report.score}." + (f" Search: {report.search}." if report.search else ""),
        "",
        "| step | removed | ratio % | calibration PPL |",
        "|---:|---|---:|---:|",
        f"| 0 | (dense) | 0.00 | {_fmt(calib.dense_ppl)} |",
    ]
    for step, ppl in zip(report.steps, calib.ppl_per_step):
        lines.append(f"| {step.step} | {step.unit} | {100 * step.ratio:.2f} | {_fmt(ppl)} |")
    if report.evaluation:
        lines += ["", "| evaluation | dense PPL | pruned PPL |", "|---|---:|---:|"]
        for name, ev in report.evaluation.items():
            p = ev.protocol
            lines.append(f"| {name} ({p['windows']} x {p['seqlen']} tokens) | {_fmt(ev.dense_ppl)} | {_fmt(ev.pruned_ppl)} |")
    if report.speed:
        dense, pruned = report.speed["dense"], report.speed["pruned"]
        lines += ["", f"Decode speed (batch {dense['batch_size']}, {dense['prompt_tokens']}-token prompt, "
                      f"{dense['decode_tokens']} tokens, median of {dense['repeats']}, {dense['device']}, "
                      f"{dense['threads']} threads): {dense['decode_tokens_per_s']:.1f} -> "
                      f"{pruned['decode_tokens_per_s']:.1f} tokens/s."]
    lines += [
        "",
        f"Calibration: {proto['dataset']} ({proto['split']}), {proto['documents']} documents "
        f"(seed {proto['seed']}), {proto['windows']} windows x {proto['seqlen']} tokens, "
        f"token sha256 {proto['token_sha256'][:16]}...",
        *search_cost_table(report),
        "",
        *_footer(report),
        *_figures(report),
    ]
    return "\n".join(lines) + "\n"


def removed_summary(blocks: list[Block]) -> str:
    """'2 whole layers and 3 attention blocks': whole layers named as such, then single blocks by kind."""
    kinds_of: dict[int, set[str]] = {}
    for block in blocks:
        kinds_of.setdefault(block.layer, set()).add(block.kind)
    whole = sorted(layer for layer, kinds in kinds_of.items() if len(kinds) == 2)
    single = [b for b in blocks if b.layer not in whole]
    parts = [_count(len(whole), "whole layer")] if whole else []
    for kind, noun in (("mha", "attention block"), ("mlp", "MLP block")):
        n = sum(b.kind == kind for b in single)
        if n:
            parts.append(_count(n, noun))
    return " and ".join(parts) or "nothing"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def naive_cost(report: StructuredReport) -> dict[str, int] | None:
    """What a full forward per candidate would have cost for the same search (None: not recorded)."""
    windows = report.calibration.protocol["windows"]
    layers = report.num_layers
    blocks = head = 0
    removed_before = 0
    for step in report.steps:
        if not step.candidates:
            return None
        for name in step.candidates:
            size = 2 if name.startswith("layer.") else 1
            blocks += windows * (2 * layers - removed_before - size)
            head += windows
        removed_before = len(step.removed)
    return {"block_window_evals": blocks, "head_window_evals": head}


def search_cost_table(report: StructuredReport) -> list[str]:
    """The search's work in block and LM-head evaluations (over one window each), beside the naive cost."""
    cost = report.search_cost
    if not cost:
        return ["Search cost: none (a saved search re-applied)."]
    naive = naive_cost(report)
    lines = ["", "| search cost (x one window) | this run | naive: a full forward per candidate |", "|---|---:|---:|"]
    for key, label in (("block_window_evals", "block evaluations"), ("head_window_evals", "LM-head evaluations")):
        lines.append(f"| {label} | {cost.get(key, 0):,} | {f'{naive[key]:,}' if naive else 'n/a'} |")
    if cost.get("bound_window_evals"):
        lines.append(f"| lower bounds (partial LM head) | {cost['bound_window_evals']:,} | 0 |")
    lines.append(f"| candidates completed / abandoned early | {cost.get('completed', 0):,} / {cost.get('abandoned', 0):,} | "
                 f"{cost.get('completed', 0) + cost.get('abandoned', 0):,} / 0 |")
    if cost.get("eliminated"):
        lines.append(f"| candidates eliminated on part of the windows (approximate) | {cost['eliminated']:,} | 0 |")
    return lines


def comparison_rows(report: StructuredReport) -> list[tuple[str, str, str]]:
    """Dense vs pruned of a structured report: parameters, calibration and evaluation PPL, decode speed."""
    calib = report.calibration
    rows = [("parameters", f"{report.dense_params:,}", f"{report.pruned_params:,}"),
            (f"calibration PPL ({calib.protocol['dataset']})", _fmt(calib.dense_ppl), _fmt(calib.ppl_per_step[-1]))]
    for name, ev in report.evaluation.items():
        p = ev.protocol
        rows.append((f"{name} PPL ({p['windows']} x {p['seqlen']} tokens)", _fmt(ev.dense_ppl), _fmt(ev.pruned_ppl)))
    if report.speed:
        dense, pruned = report.speed["dense"], report.speed["pruned"]
        rows.append((f"decode tokens/s (batch {dense['batch_size']}, {dense['threads']} threads)",
                     f"{dense['decode_tokens_per_s']:.1f}", f"{pruned['decode_tokens_per_s']:.1f}"))
    return rows


def render_comparison(report: StructuredReport) -> str:
    """The dense-vs-pruned table printed at the end of ``secateurs prune`` (structured methods)."""
    rows = [("", "dense", "pruned"), *comparison_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
    lines.append(f"removed {removed_summary(report.removed_blocks)}: {100 * report.ratio:.2f}% of all parameters")
    return "\n".join(lines)


def render_results(result: dict[str, Any]) -> str:
    """The table printed at the end of ``secateurs eval``."""
    lines = []
    for spec, res in result.get("perplexity", {}).items():
        proto = res["protocol"]
        lines.append(f"{spec} ({proto['split'] or 'file'}): token PPL {res['ppl']:.3f} "
                     f"over {proto['windows']} windows x {proto['seqlen']} tokens")
    tasks = result.get("tasks", {})
    if tasks:
        lines += ["", "| task | rows | metric | value | stderr |", "|---|---:|---|---:|---:|"]
        for name, res in tasks.items():
            metrics = res["metrics"]
            for key, value in metrics.items():
                if key.endswith("_stderr"):
                    continue
                stderr = metrics.get(f"{key}_stderr")
                lines.append(f"| {name} | {res['n']} | {key} | {value:.4f} | {_fmt(stderr, 4)} |")
    reported = [average.line(result[average.key]) for average in averages() if average.key in result]
    if reported:  # the suites' averages (evaluation/suites.py)
        lines += ["", *reported]
    for key, label in (("speed", "speed"), ("speed_baseline", "baseline speed")):
        if key in result:
            s = result[key]
            lines.append(f"{label}: prefill {s['prefill_tokens_per_s']:.1f} tok/s, decode {s['decode_tokens_per_s']:.1f} tok/s "
                         f"(batch {s['batch_size']}, prompt {s['prompt_tokens']}, decode {s['decode_tokens']}, "
                         f"{s['dtype']} on {s['device']}, {s['params']:,} params)")
    if "speed" in result and "speed_baseline" in result:
        a, b = result["speed"], result["speed_baseline"]
        lines.append(f"speed-up vs baseline: prefill {a['prefill_tokens_per_s'] / b['prefill_tokens_per_s']:.2f}x, "
                     f"decode {a['decode_tokens_per_s'] / b['decode_tokens_per_s']:.2f}x "
                     "(unstructured zeros give none with dense kernels)")
    return "\n".join(lines)
