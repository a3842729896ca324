"""Evaluation tasks: how each row becomes requests, with lm-evaluation-harness's prompts.

All prompts live here, in one place (the README shows them). A multiple-choice item is a list of
(context, continuation) requests, one per choice; the score of a choice is the log-probability of its
continuation given its context. A task declares its kind, its metrics (from :mod:`.metrics`) and, for a
generation task, how to generate. To add a task: define it below and list it in ``TASKS``. LegalBench's
sub-tasks (``legalbench:<task>``) are made on demand from its data file.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..data import DATA_FILES, legalbench_label, read_jsonl_rows, resolve_data_dir
from ..errors import SecateursError
from ..files import sha256_file
from .metrics import GENERATION, METRICS, MULTIPLE_CHOICE


@dataclass
class Item:
    """One evaluation row, turned into requests."""

    id: str
    gold: int | None
    contexts: list[str]  # per choice (equal when the context is shared)
    continuations: list[str]  # per choice, with the target delimiter
    choices: list[str]  # the choice texts (their character length normalises acc_norm)
    reference: str | None = None  # generation tasks: the reference text
    group: str | None = None  # LegalBench: the sub-task

    @property
    def shared_context(self) -> bool:
        return len(set(self.contexts)) == 1


@dataclass(frozen=True)
class Generation:
    """How a generation task generates: greedily, up to ``max_new_tokens``, kept whole or cut at the first line."""

    max_new_tokens: int
    first_line: bool = True


@dataclass(frozen=True)
class Task:
    """One task: where its rows are, how a row becomes an item, what it measures. Checked on creation."""

    name: str
    file: str  # relative to the data directory
    kind: str  # multiple_choice | generation
    prompt: str  # shown in the README and recorded in the results
    build: Callable[[dict], Item | None]
    metrics: tuple[str, ...]  # names in metrics.METRICS[kind]
    where: Callable[[dict], bool] | None = None
    generation: Generation | None = None  # a generation task's settings

    def __post_init__(self) -> None:
        if self.kind not in METRICS:
            raise SecateursError(f"task {self.name}: unknown kind '{self.kind}'; choose {', '.join(METRICS)}")
        unknown = [m for m in self.metrics if m not in METRICS[self.kind]]
        if unknown:
            raise SecateursError(f"task {self.name}: no {self.kind} metric '{unknown[0]}'; "
                                 f"known: {', '.join(METRICS[self.kind])}")
        if (self.kind == GENERATION) != (self.generation is not None):
            raise SecateursError(f"task {self.name}: a generation task, and only one, has generation settings")


# --- lm-evaluation-harness formats -------------------------------------------------------------------
def _mc(context: str, choices: list[str], gold: Any, row_id: Any) -> Item:
    return Item(str(row_id), gold, [context] * len(choices), [" " + c for c in choices], list(choices))


def hellaswag_preprocess(text: str) -> str:
    """The harness's HellaSwag cleaning."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def winogrande_item(row: dict) -> Item:
    """Partial scoring: context = sentence up to the blank with the option; continuation = the rest."""
    sentence = row["query"]
    if "_" not in sentence:
        raise KeyError("_ (the blank) in query")
    blank = sentence.index("_")
    continuation = " " + sentence[blank + 1:].strip()
    contexts = [sentence[:blank] + option for option in row["choices"]]
    return Item(str(row["id"]), row["gold"], contexts, [continuation] * len(contexts), list(row["choices"]))


PUBMEDQA_CHOICES = ["yes", "no", "maybe"]
MEQSUM_PROMPT = "Summarize the following health question in one sentence.\n\nQuestion: {question}\nSummary:"
QUESTION_ANSWER = "Question: {query}\\nAnswer: {choice}"  # the prompt as shown (PIQA, ARC)


def _question_answer(row: dict) -> Item:
    return _mc(f"Question: {row['query']}\nAnswer:", row["choices"], row["gold"], row["id"])


def _hellaswag(row: dict) -> Item:
    return _mc(hellaswag_preprocess(row["query"]), [hellaswag_preprocess(c) for c in row["choices"]], row["gold"], row["id"])


def _query_choice(row: dict) -> Item:
    return _mc(row["query"], row["choices"], row["gold"], row["id"])


def _pubmedqa(row: dict) -> Item:
    context = f"Abstract: {row['context']}\nQuestion: {row['question']}\nAnswer:"
    return _mc(context, PUBMEDQA_CHOICES, row["gold"], row["id"])


def _meqsum(row: dict) -> Item:
    return Item(str(row["id"]), None, [MEQSUM_PROMPT.format(question=row["question"].strip())], [], [],
                reference=row["summary"])


PIQA = Task("piqa", DATA_FILES["piqa"], MULTIPLE_CHOICE, QUESTION_ANSWER, _question_answer, ("acc", "acc_norm"))
ARC_EASY = Task("arc_easy", DATA_FILES["arc_easy"], MULTIPLE_CHOICE, QUESTION_ANSWER, _question_answer, ("acc", "acc_norm"))
ARC_CHALLENGE = Task("arc_challenge", DATA_FILES["arc_challenge"], MULTIPLE_CHOICE, QUESTION_ANSWER, _question_answer,
                     ("acc", "acc_norm"))
HELLASWAG = Task("hellaswag", DATA_FILES["hellaswag"], MULTIPLE_CHOICE, "{query} {ending} (the harness's cleaning)",
                 _hellaswag, ("acc", "acc_norm"))
WINOGRANDE = Task("winogrande", DATA_FILES["winogrande"], MULTIPLE_CHOICE,
                  "{sentence up to _}{option} | scored: {rest of the sentence} (partial scoring)", winogrande_item, ("acc",))
OPENBOOKQA = Task("openbookqa", DATA_FILES["openbookqa"], MULTIPLE_CHOICE, "{query} {choice}", _query_choice,
                  ("acc", "acc_norm"))
PUBMEDQA = Task("pubmedqa", DATA_FILES["pubmedqa"], MULTIPLE_CHOICE,
                "Abstract: {context}\\nQuestion: {question}\\nAnswer: yes|no|maybe", _pubmedqa, ("acc", "macro_f1"),
                where=lambda r: r.get("split") == "test")
MEQSUM = Task("meqsum", DATA_FILES["meqsum"], GENERATION, MEQSUM_PROMPT.replace("\n", "\\n") + " (greedy)", _meqsum,
              ("rouge1", "rouge2", "rougeL"), generation=Generation(max_new_tokens=48, first_line=True))

TASKS: dict[str, Task] = {t.name: t for t in (
    PIQA, ARC_EASY, ARC_CHALLENGE, HELLASWAG, WINOGRANDE, OPENBOOKQA, PUBMEDQA, MEQSUM,
)}

LEGALBENCH = "legalbench:"  # legalbench:<task> names one of LegalBench's classification tasks


def _legalbench_task(sub: str, labels: list[str]) -> Task:
    def build(row: dict) -> Item:
        label = legalbench_label(row)
        context = f"{row['text']}\nAnswer:"
        item = _mc(context, labels, labels.index(label), row.get("id") or "")
        item.group = sub
        return item

    return Task(f"{LEGALBENCH}{sub}", DATA_FILES["legalbench"], MULTIPLE_CHOICE, "{text}\\nAnswer: {label}",
                build, ("acc", "balanced_acc"), where=lambda r: r.get("task") == sub and r.get("split") == "test")


MAX_LEGAL_LABELS = 6  # LegalBench tasks with more distinct labels are not classification tasks here


def task_names() -> list[str]:
    return [*TASKS, f"{LEGALBENCH}<task>"]


@dataclass
class TaskData:
    task: Task
    items: list[Item]
    protocol: dict[str, Any] = field(default_factory=dict)


def load_task(name: str, data_dir: str | os.PathLike | None, limit: int | None = None,
              sample: int | None = None, seed: int = 0) -> TaskData:
    """Rows of a task as items. ``limit`` takes the first N (the harness's rule); ``sample`` a seeded subset."""
    if limit is not None and limit < 1:
        raise SecateursError(f"--limit must be at least 1, got {limit}")
    if sample is not None and sample < 1:
        raise SecateursError(f"--sample must be at least 1, got {sample}")
    root = resolve_data_dir(data_dir)
    if root is None:
        raise SecateursError("tasks are read from the data directory: pass --data-dir or set SECATEURS_DATA")
    path = Path(name)
    if path.suffix == ".jsonl":  # any JSONL in the multiple-choice format
        task = Task(path.stem, str(path), MULTIPLE_CHOICE, "{query} {choice}",
                    lambda r: _mc(r["query"], r["choices"], r["gold"], r.get("id", "")), ("acc", "acc_norm"))
        file = path if path.is_absolute() else Path.cwd() / path
    else:
        task = _resolve(name, root)
        file = root / task.file
    items, line_numbers = [], []
    for number, row in read_jsonl_rows(file):
        if task.where is not None and not task.where(row):
            continue
        try:
            item = task.build(row)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise SecateursError(f"{file}:{number}: row does not fit task {task.name} ({exc})") from exc
        if item.gold is not None and not 0 <= item.gold < len(item.choices):
            raise SecateursError(f"{file}:{number}: gold index {item.gold} is out of range for {len(item.choices)} choices")
        items.append(item)
        line_numbers.append(number)
    if not items:
        raise SecateursError(f"task {task.name}: no rows in {file}")
    total = len(items)
    chosen = list(range(total))
    if sample is not None:
        chosen = sorted(random.Random(seed).sample(chosen, min(sample, total)))
    if limit is not None:
        chosen = chosen[:limit]
    protocol = {
        "task": task.name, "file": str(file), "sha256": sha256_file(file), "rows_available": total,
        "rows_used": len(chosen), "limit": limit, "sample": sample, "seed": seed if sample is not None else None,
        "prompt": task.prompt, "metrics": list(task.metrics), "line_numbers": [line_numbers[i] for i in chosen][:20],
    }
    return TaskData(task, [items[i] for i in chosen], protocol)


def _resolve(name: str, root: Path) -> Task:
    if name in TASKS:
        return TASKS[name]
    if name.startswith(LEGALBENCH):
        sub = name.removeprefix(LEGALBENCH)
        labels: dict[str, set[str]] = {}
        for _, row in read_jsonl_rows(root / DATA_FILES["legalbench"]):
            labels.setdefault(row.get("task"), set()).add(legalbench_label(row))
        if sub not in labels:
            raise SecateursError(f"unknown LegalBench task '{sub}'; known: {', '.join(sorted(labels))}")
        if len(labels[sub]) > MAX_LEGAL_LABELS:
            raise SecateursError(f"LegalBench task '{sub}' has {len(labels[sub])} distinct answers: not a classification task")
        return _legalbench_task(sub, sorted(labels[sub]))
    raise SecateursError(f"unknown task '{name}'; known tasks: {', '.join(task_names())} (or a .jsonl file)")
