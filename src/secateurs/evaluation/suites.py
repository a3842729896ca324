"""Suites: named sets of perplexity data sets and tasks, with the averages they report, registered by name.

An average is data: which metric of which tasks. ``evaluate`` reports every registered average whose
tasks were run (named by a suite or not) under its key in the results; ``render_results`` prints each
with its label. To add a suite: define it below and list it in ``SUITES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from ..errors import SecateursError
from .tasks import LEGALBENCH, TASKS


@dataclass(frozen=True)
class MeanOfTasks:
    """One metric of each of a fixed set of tasks, averaged; reported when every one of them was run."""

    key: str  # in the results
    label: str  # as printed
    metric_of: dict[str, str]  # task -> its metric

    def __post_init__(self) -> None:
        for task, metric in self.metric_of.items():
            if task not in TASKS or metric not in TASKS[task].metrics:
                raise SecateursError(f"average {self.key}: task '{task}' has no metric '{metric}'")

    def compute(self, tasks: dict[str, Any]) -> dict[str, Any] | None:
        """From the results of the tasks run; None when one of its tasks was not run."""
        if not all(name in tasks for name in self.metric_of):
            return None
        values = {name: tasks[name]["metrics"][metric] for name, metric in self.metric_of.items()}
        return {"average": sum(values.values()) / len(values), "per_task": values, "metrics": dict(self.metric_of)}

    def line(self, value: dict[str, Any]) -> str:
        return f"{self.label} over {len(value['per_task'])} tasks: {100 * value['average']:.2f}"


@dataclass(frozen=True)
class MacroAverage:
    """Each of some metrics averaged over the tasks of a family that were run, whichever they were."""

    key: str  # in the results
    label: str  # as printed
    family: str  # the tasks' name prefix
    metrics: tuple[str, ...]

    def compute(self, tasks: dict[str, Any]) -> dict[str, Any] | None:
        """From the results of the tasks run; None when none of the family was run."""
        family = {name: res["metrics"] for name, res in tasks.items() if name.startswith(self.family)}
        if not family:
            return None
        return {"tasks": sorted(family), **{key: sum(m[key] for m in family.values()) / len(family)
                                            for key in self.metrics}}

    def line(self, value: dict[str, Any]) -> str:
        return f"{self.label} over {len(value['tasks'])} tasks: " + ", ".join(
            f"{key.replace('_', ' ')} {value[key]:.4f}" for key in self.metrics)


Average = Union[MeanOfTasks, MacroAverage]


@dataclass(frozen=True)
class Suite:
    """What ``secateurs eval --suite NAME`` runs, and the averages it reports."""

    name: str
    summary: str  # for --suite's help
    ppl: tuple[str, ...]  # perplexity data sets
    tasks: tuple[str, ...]
    averages: tuple[Average, ...] = ()


# The pruning papers' zero-shot average over BlockPruner's five tasks.
PAPER_AVERAGE = MeanOfTasks("paper_average", "paper average (acc_norm; WinoGrande acc)", {
    "piqa": "acc_norm", "winogrande": "acc", "hellaswag": "acc_norm", "arc_easy": "acc_norm",
    "arc_challenge": "acc_norm"})
PAPER_TASKS = tuple(PAPER_AVERAGE.metric_of)
LEGALBENCH_TASKS = ("overruling", "hearsay", "proa", "abercrombie", "personal_jurisdiction", "diversity_1",
                    "CUAD_Audit Rights", "CUAD_Governing Law")  # the legal suite's
LEGALBENCH_AVERAGE = MacroAverage("legalbench_macro_average", "LegalBench macro average", LEGALBENCH,
                                  ("acc", "balanced_acc"))

GENERAL = Suite("general", "wikitext2 + c4 and six zero-shot tasks", ("wikitext2", "c4"),
                ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "openbookqa"))
PAPER = Suite("paper", "BlockPruner's five + wikitext2", ("wikitext2",), PAPER_TASKS, (PAPER_AVERAGE,))
HEALTHCARE = Suite("healthcare", "healthcare:test + pubmedqa, meqsum", ("healthcare:test",), ("pubmedqa", "meqsum"))
LEGAL = Suite("legal", "legal:test + eight LegalBench tasks", ("legal:test",),
              tuple(LEGALBENCH + name for name in LEGALBENCH_TASKS), (LEGALBENCH_AVERAGE,))

SUITES: dict[str, Suite] = {s.name: s for s in (GENERAL, PAPER, HEALTHCARE, LEGAL)}


def averages() -> list[Average]:
    """Every registered suite's averages, each once, in the order of the suites."""
    found: dict[str, Average] = {}
    for suite in SUITES.values():
        for average in suite.averages:
            found.setdefault(average.key, average)
    return list(found.values())
