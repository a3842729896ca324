"""Report figures (PNG): what was removed, and PPL vs ratio; or the sparsity of every layer.

Drawn on ``matplotlib.figure.Figure`` objects, which save PNGs by themselves: no pyplot, so importing
secateurs leaves matplotlib's backend (a notebook's, say) as it was.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .report import Report, StructuredReport, UnstructuredReport

LOG_AXIS_SPAN = 10  # a log PPL axis when the values span more than this factor
DPI = 120


def plot_report(report: Report, directory: Path) -> list[str]:
    """The figures of ``report``, written to ``directory``; returns their file names."""
    if isinstance(report, UnstructuredReport):
        return plot_unstructured(report, directory)
    return plot_structured(report, directory)


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


def plot_structured(report: StructuredReport, directory: Path) -> list[str]:
    """removed_blocks.png (layer x kind grid, numbered by step) and ppl_vs_ratio.png; returns file names."""
    layers = report.num_layers
    order = {name: i + 1 for i, name in enumerate(report.removal_order)}
    fig = Figure(figsize=(max(6, layers * 0.3), 2.2))
    ax = fig.subplots()
    for row, kind in enumerate(("mha", "mlp")):
        for layer in range(layers):
            step = order.get(f"{kind}.{layer}") or order.get(f"layer.{layer}")
            ax.add_patch(Rectangle((layer, row), 0.95, 0.9, color="tab:red" if step else "0.85"))
            if step:
                ax.text(layer + 0.47, row + 0.45, str(step), ha="center", va="center", fontsize=7, color="white")
    ax.set_xlim(0, layers)
    every = max(1, layers // 16)
    ax.set_xticks([i + 0.47 for i in range(0, layers, every)], [str(i) for i in range(0, layers, every)])
    ax.set_ylim(0, 2)
    ax.set_yticks([0.45, 1.45], ["MHA", "MLP"])
    ax.set_xlabel("layer (numbers: removal step)")
    ax.set_title(f"{report.method}: removed blocks ({100 * report.ratio:.2f}% of parameters)")
    _save(fig, directory / "removed_blocks.png")

    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    calibration = report.calibration
    ratios = [0.0] + [100 * s.ratio for s in report.steps]
    ppl = [calibration.dense_ppl] + list(calibration.ppl_per_step)
    ax.plot(ratios, ppl, marker="o", label=f"calibration ({calibration.protocol['dataset']}), every step")
    measured = list(ppl)
    for name, ev in report.evaluation.items():  # measured on the dense and the final model only
        ax.plot([0, ratios[-1]], [ev.dense_ppl, ev.pruned_ppl], marker="s", linestyle="none", label=name)
        measured += [ev.dense_ppl, ev.pruned_ppl]
    if max(measured) / min(measured) > LOG_AXIS_SPAN:
        ax.set_yscale("log")
    ax.set_xlabel("parameter ratio removed (%)")
    ax.set_ylabel("perplexity")
    ax.legend(fontsize=8)
    ax.set_title(f"{report.method} on {report.model.get('spec')}", fontsize=10)
    _save(fig, directory / "ppl_vs_ratio.png")
    return ["removed_blocks.png", "ppl_vs_ratio.png"]


def plot_unstructured(report: UnstructuredReport, directory: Path) -> list[str]:
    """sparsity_per_layer.png: the achieved sparsity of every decoder layer's matrices; returns file names."""
    per_layer = report.sparsity["per_layer"]
    fig = Figure(figsize=(max(5, len(per_layer) * 0.25), 3))
    ax = fig.subplots()
    ax.bar(range(len(per_layer)), [100 * s for s in per_layer], color="tab:blue")
    ax.axhline(100 * report.sparsity["over_pruned_matrices"], color="0.3", linestyle="--", linewidth=1,
               label="over all pruned matrices")
    ax.set_xlabel("layer")
    ax.set_ylabel("zeros (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{report.method} on {report.model.get('spec')}: {report.details.get('pattern')}", fontsize=10)
    _save(fig, directory / "sparsity_per_layer.png")
    return ["sparsity_per_layer.png"]
