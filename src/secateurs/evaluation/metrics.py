"""Task metrics with lm-evaluation-harness's definitions: accuracy and its standard error, macro F1,
balanced accuracy, ROUGE.

``METRICS`` holds, per task kind, the metrics a task of that kind may name: a multiple-choice task's
are computed from its choices, a generation task's from its predicted and reference texts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def mean_stderr(values: list[float]) -> float:
    """The harness's standard error: sample standard deviation / sqrt(n)."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def macro_f1(golds: list[int], preds: list[int], classes: int) -> float:
    scores = []
    for c in range(classes):
        tp = sum(g == c and p == c for g, p in zip(golds, preds))
        fp = sum(g != c and p == c for g, p in zip(golds, preds))
        fn = sum(g == c and p != c for g, p in zip(golds, preds))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / classes


def balanced_accuracy(golds: list[int], preds: list[int]) -> float:
    recalls = []
    for c in sorted(set(golds)):
        rows = [p for g, p in zip(golds, preds) if g == c]
        recalls.append(sum(p == c for p in rows) / len(rows))
    return sum(recalls) / len(recalls)


def rouge_scores(predictions: list[str], references: list[str],
                 types: tuple[str, ...] = ROUGE_TYPES) -> dict[str, float]:
    """Mean ROUGE F-measure of each of ``types`` (Google's rouge-score package, with stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
    totals = {key: 0.0 for key in types}
    for pred, ref in zip(predictions, references):
        for key, score in scorer.score(ref, pred).items():
            totals[key] += score.fmeasure
    return {k: v / len(predictions) for k, v in totals.items()}


@dataclass
class Choices:
    """A multiple-choice task's outcome: gold and predicted choice per item (raw and length-normalised)."""

    golds: list[int]
    preds: list[int]
    preds_norm: list[int]
    classes: int  # choices per item


def _accuracy(key: str, golds: list[int], preds: list[int]) -> dict[str, float]:
    hits = [float(p == g) for g, p in zip(golds, preds)]
    return {key: sum(hits) / len(hits), f"{key}_stderr": mean_stderr(hits)}


# A multiple-choice task names its metrics; each computes its values from the choices (the harness's definitions).
CHOICE_METRICS: dict[str, Callable[[Choices], dict[str, float]]] = {
    "acc": lambda c: _accuracy("acc", c.golds, c.preds),
    "acc_norm": lambda c: _accuracy("acc_norm", c.golds, c.preds_norm),
    "macro_f1": lambda c: {"macro_f1": macro_f1(c.golds, c.preds, c.classes)},
    "balanced_acc": lambda c: {"balanced_acc": balanced_accuracy(c.golds, c.preds)},
}


@dataclass
class Generations:
    """A generation task's outcome: each item's predicted and reference text."""

    predictions: list[str]
    references: list[str]


# A generation task names its metrics; each computes its value from the texts.
GENERATION_METRICS: dict[str, Callable[[Generations], dict[str, float]]] = {
    "rouge1": lambda g: rouge_scores(g.predictions, g.references, ("rouge1",)),
    "rouge2": lambda g: rouge_scores(g.predictions, g.references, ("rouge2",)),
    "rougeL": lambda g: rouge_scores(g.predictions, g.references, ("rougeL",)),
}

MULTIPLE_CHOICE, GENERATION = "multiple_choice", "generation"  # the task kinds
METRICS: dict[str, dict[str, Callable]] = {MULTIPLE_CHOICE: CHOICE_METRICS, GENERATION: GENERATION_METRICS}
