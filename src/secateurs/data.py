"""Calibration and evaluation text: named sets, local files, and fixed-length token windows.

Protocol (the pruning papers'): join the documents with "\\n\\n", tokenise once, cut into
non-overlapping windows of ``seqlen`` tokens and drop the tail. Every window set records which
documents went in (ids), the files and their sha256, and the sha256 of the token stream used.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .errors import SecateursError
from .io import sha256_file

DOCUMENT_SEPARATOR = "\n\n"
DATA_DIR_ENV = "SECATEURS_DATA"

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}"
)


@dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclass
class DocumentSet:
    """Documents plus where they came from."""

    name: str
    split: str | None
    documents: list[Document]
    files: dict[str, str] = field(default_factory=dict)  # path (relative to data_dir) -> sha256
    data_dir: str | None = None


# --- renderers: JSON row -> text ---------------------------------------------------------------
def render_alpaca(row: dict) -> str:
    template = ALPACA_PROMPT if row.get("input") else ALPACA_PROMPT_NO_INPUT
    return template.format(instruction=row["instruction"], input=row.get("input", ""), output=row["output"])


def render_medquad(row: dict) -> str:
    return f"Question: {row['question']}\nAnswer: {row['answer']}"


def render_pubmedqa_with_answer(row: dict) -> str:
    decision = row["choices"][row["gold"]]
    return (
        f"Context: {row['context']}\nQuestion: {row['question']}\n"
        f"Answer: {decision}. {row['long_answer']}"
    )


def legalbench_answer(row: dict) -> str:
    return str(row.get("answer") or row.get("label") or "")


def render_legalbench_with_answer(row: dict) -> str:
    return f"{row['text']}\nAnswer: {legalbench_answer(row)}"


# --- readers -----------------------------------------------------------------------------------
def _missing(path: Path) -> SecateursError:
    return SecateursError(f"data file not found: {path} (is the data directory right?)")


def read_lines(path: Path, prefix: str = "") -> list[Document]:
    """One document per line, empty lines included (as Hugging Face's WikiText rows)."""
    if not path.is_file():
        raise _missing(path)
    with open(path, encoding="utf-8") as handle:
        return [Document(f"{prefix}{i}", line.rstrip("\n")) for i, line in enumerate(handle)]


def read_jsonl_rows(path: Path) -> Iterable[tuple[int, dict]]:
    """Yield (line number, row), with a clear error naming the file and line for bad JSON."""
    if not path.is_file():
        raise _missing(path)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SecateursError(f"{path}:{number}: malformed JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise SecateursError(f"{path}:{number}: expected a JSON object per line")
            yield number, row


def read_jsonl(
    path: Path,
    render: Callable[[dict], str],
    prefix: str = "",
    where: Callable[[dict], bool] | None = None,
) -> list[Document]:
    docs = []
    for number, row in read_jsonl_rows(path):
        if where is not None and not where(row):
            continue
        try:
            text = render(row)
        except (KeyError, IndexError, TypeError) as exc:
            raise SecateursError(f"{path}:{number}: row lacks the field {exc} needed here") from exc
        row_id = row.get("id")
        ident = f"{prefix}{row_id}" if row_id not in (None, "") else f"{prefix}line{number}"
        if text.strip():
            docs.append(Document(ident, text))
    return docs


# --- named sets --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    files: tuple[str, ...]  # relative to the data directory
    read: Callable[[Path], list[Document]]  # data directory -> documents
    description: str


@dataclass(frozen=True)
class NamedSet:
    name: str
    description: str
    splits: dict[str, Split]

    @property
    def default_split(self) -> str:
        return next(iter(self.splits))


def _split_is(value: str) -> Callable[[dict], bool]:
    return lambda row: row.get("split") == value


def _lines(rel: str, desc: str) -> Split:
    return Split((rel,), lambda root: read_lines(root / rel), desc)


def _alpaca(root: Path) -> list[Document]:
    return read_jsonl(root / "text/alpaca/alpaca_200.jsonl", render_alpaca, "alpaca:") + read_jsonl(
        root / "text/alpaca_libre/tasks.jsonl", render_alpaca, "alpaca_libre:"
    )


def _legalbench_train(root: Path) -> list[Document]:
    """LegalBench train rows with their answers, minus any whose text is also a test row's (206 are)."""
    path = root / "tasks/legalbench.jsonl"
    test_texts = {row.get("text") for _, row in read_jsonl_rows(path) if row.get("split") == "test"}
    return read_jsonl(path, render_legalbench_with_answer, "legalbench:",
                      where=lambda r: r.get("split") == "train" and r.get("text") not in test_texts)


def _healthcare_train(root: Path) -> list[Document]:
    """PubMedQA train rows with decision and long answer, then MedQuAD question/answer pairs."""
    return read_jsonl(root / "tasks/pubmedqa.jsonl", render_pubmedqa_with_answer, "pubmedqa:",
                      where=_split_is("train")) + read_jsonl(root / "text/medquad/qa.jsonl", render_medquad, "medquad:")


def _pubmedqa_test_contexts(root: Path) -> list[Document]:
    return read_jsonl(root / "tasks/pubmedqa.jsonl", lambda r: r["context"], "pubmedqa:", where=_split_is("test"))


def _legalbench_test_texts(root: Path) -> list[Document]:
    return read_jsonl(root / "tasks/legalbench.jsonl", lambda r: r["text"], "legalbench:", where=_split_is("test"))


NAMED_SETS: dict[str, NamedSet] = {
    s.name: s
    for s in [
        NamedSet("wikitext2", "WikiText-2 (tokenized variant), one document per line", {
            "test": _lines("text/wikitext2/test.txt", "test lines"),
            "valid": _lines("text/wikitext2/valid.txt", "validation lines"),
        }),
        NamedSet("ptb", "Penn Treebank (Mikolov preprocessing), one sentence per line", {
            "test": _lines("text/ptb/test.txt", "test sentences"),
            "valid": _lines("text/ptb/valid.txt", "validation sentences"),
        }),
        NamedSet("c4", "C4 English validation documents (2,000-document sample)", {
            "validation": Split(("text/c4/validation_2k.jsonl",),
                                lambda root: read_jsonl(root / "text/c4/validation_2k.jsonl", lambda r: r["text"]),
                                "documents"),
        }),
        NamedSet("alpaca", "Alpaca + alpaca-libre instructions, rendered with the Alpaca prompt template", {
            "train": Split(("text/alpaca/alpaca_200.jsonl", "text/alpaca_libre/tasks.jsonl"), _alpaca,
                           "instruction, input and response"),
        }),
        NamedSet("medquad", "MedQuAD consumer-health question/answer pairs", {
            "train": Split(("text/medquad/qa.jsonl",),
                           lambda root: read_jsonl(root / "text/medquad/qa.jsonl", render_medquad), "Q + A"),
        }),
        NamedSet("pubmedqa", "PubMedQA PQA-L", {
            "train": Split(("tasks/pubmedqa.jsonl",),
                           lambda root: read_jsonl(root / "tasks/pubmedqa.jsonl", render_pubmedqa_with_answer,
                                                   "pubmedqa:", where=_split_is("train")),
                           "train rows: context, question, decision and long answer"),
            "test": Split(("tasks/pubmedqa.jsonl",), _pubmedqa_test_contexts,
                          "test rows: abstracts only (held-out domain text)"),
        }),
        NamedSet("legalbench", "LegalBench 2023-03 snapshot", {
            "train": Split(("tasks/legalbench.jsonl",), _legalbench_train,
                           "train rows: text and answer (rows whose text is also in test left out)"),
            "test": Split(("tasks/legalbench.jsonl",), _legalbench_test_texts,
                          "test rows: texts only (held-out domain text)"),
        }),
        NamedSet("healthcare", "D-Pruner healthcare domain: calibration (train) and held-out text (test)", {
            "train": Split(("tasks/pubmedqa.jsonl", "text/medquad/qa.jsonl"), _healthcare_train,
                           "PubMedQA train rows with answers + MedQuAD Q/A pairs"),
            "test": Split(("tasks/pubmedqa.jsonl",), _pubmedqa_test_contexts, "PubMedQA test abstracts"),
        }),
        NamedSet("legal", "D-Pruner legal domain: calibration (train) and held-out text (test)", {
            "train": Split(("tasks/legalbench.jsonl",), _legalbench_train, "LegalBench train rows with answers"),
            "test": Split(("tasks/legalbench.jsonl",), _legalbench_test_texts, "LegalBench test texts"),
        }),
    ]
}

DOMAINS = ("healthcare", "legal")  # named sets with a calibration (train) and a held-out (test) split


def domain_sets(domain: str) -> tuple[str, str]:
    """(calibration spec, held-out evaluation spec) of a named domain."""
    if domain not in DOMAINS:
        raise SecateursError(f"unknown domain '{domain}'; known domains: {', '.join(DOMAINS)} "
                             "(or pass your own text with --domain-data FILE)")
    return f"{domain}:train", f"{domain}:test"


# Hub fallback when no data directory is configured (needs the optional `datasets` package and a
# network): name -> (dataset path, config, {our split: hub split}, text field).
HUB_SOURCES: dict[str, tuple[str, str | None, dict[str, str], str]] = {
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", {"test": "test", "valid": "validation"}, "text"),
    "ptb": ("ptb-text-only/ptb_text_only", None, {"test": "test", "valid": "validation"}, "sentence"),
    "alpaca": ("tatsu-lab/alpaca", None, {"train": "train"}, "text"),
}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``--data-dir``, else ``$SECATEURS_DATA``, else None (the hub fallback)."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        source = "--data-dir" if data_dir is not None else f"${DATA_DIR_ENV}"
        raise SecateursError(f"data directory does not exist: {path} (from {source})")
    return path


def _parse_spec(spec: str) -> tuple[str, str | None]:
    name, _, split = spec.partition(":")
    return name, (split or None)


def _from_hub(name: str, split: str) -> DocumentSet:
    if name not in HUB_SOURCES or split not in HUB_SOURCES[name][2]:
        raise SecateursError(
            f"no data directory is set (--data-dir or ${DATA_DIR_ENV}) and '{name}:{split}' has no "
            "Hugging Face hub fallback; point --data-dir at a secateurs data directory"
        )
    try:
        import datasets
    except ImportError as exc:
        raise SecateursError(
            f"no data directory is set: pass --data-dir DIR or set ${DATA_DIR_ENV} "
            "(or `pip install datasets` to fetch from the Hugging Face hub when online)"
        ) from exc
    path, config, splits, text_field = HUB_SOURCES[name]
    try:
        rows = datasets.load_dataset(path, config, split=splits[split])
    except Exception as exc:  # network, missing dataset: anything the hub client raises
        raise SecateursError(f"could not fetch {path} from the Hugging Face hub: {exc}") from exc
    docs = [Document(f"{name}:{i}", row[text_field]) for i, row in enumerate(rows)]
    return DocumentSet(name, split, docs, {f"hf://{path}/{config or ''}/{splits[split]}": "hub"})


def load_documents(spec: str, data_dir: str | os.PathLike | None = None, text_field: str = "text") -> DocumentSet:
    """Documents of a named set (``wikitext2``, ``pubmedqa:test``) or a local .txt/.jsonl file."""
    path = Path(spec).expanduser()
    if path.suffix in (".txt", ".jsonl", ".json") or path.exists():
        return load_file(path, text_field)
    name, split = _parse_spec(spec)
    if name not in NAMED_SETS:
        raise SecateursError(
            f"unknown dataset '{name}'; named sets: {', '.join(NAMED_SETS)} (or a .txt/.jsonl file path)"
        )
    named = NAMED_SETS[name]
    split = split or named.default_split
    if split not in named.splits:
        raise SecateursError(f"dataset '{name}' has no split '{split}'; splits: {', '.join(named.splits)}")
    root = resolve_data_dir(data_dir)
    if root is None:
        return _from_hub(name, split)
    entry = named.splits[split]
    docs = entry.read(root)
    files = {rel: sha256_file(root / rel) for rel in entry.files}
    return DocumentSet(name, split, docs, files, str(root.resolve()))


def load_file(path: Path, text_field: str = "text") -> DocumentSet:
    """A local file: .txt = one document per line; .jsonl = one document per row (``text_field``)."""
    if not path.is_file():
        raise SecateursError(f"data file not found: {path}")
    if path.suffix == ".txt":
        docs = read_lines(path, f"{path.name}:")
    elif path.suffix in (".jsonl", ".json"):
        def text_of(row: dict) -> str:
            if text_field not in row:
                raise KeyError(text_field)
            return str(row[text_field])

        docs = read_jsonl(path, text_of, f"{path.name}:")
    else:
        raise SecateursError(f"unsupported data file type '{path.suffix}' ({path}); use .txt or .jsonl")
    return DocumentSet(str(path), None, docs, {str(path.resolve()): sha256_file(path)})


# --- token windows -----------------------------------------------------------------------------
@dataclass
class TokenWindows:
    """Fixed-length token windows, shape (n_windows, seqlen), and the protocol that made them."""

    input_ids: torch.Tensor
    protocol: dict[str, Any]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seqlen(self) -> int:
        return self.input_ids.shape[1]


def token_sha256(ids: torch.Tensor) -> str:
    return hashlib.sha256(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def make_windows(
    docs: DocumentSet,
    tokenizer: Any,
    seqlen: int,
    samples: int | None = None,
    seed: int = 0,
    max_windows: int | None = None,
) -> TokenWindows:
    """Cut ``docs`` into non-overlapping windows of ``seqlen`` tokens under the recorded protocol.

    ``samples`` draws that many documents (seeded, in drawn order); ``max_windows`` keeps the first ones.
    """
    if seqlen < 2:
        raise SecateursError(f"sequence length must be at least 2 tokens, got {seqlen}")
    if max_windows is not None and max_windows < 1:
        raise SecateursError(f"max windows must be at least 1, got {max_windows}")
    chosen = docs.documents
    if not any(d.text.strip() for d in chosen):
        raise SecateursError(f"{docs.name}: no usable text (0 tokens; need at least {seqlen} for one window)")
    if samples is not None:
        if samples < 1:
            raise SecateursError(f"--samples must be at least 1, got {samples}")
        if samples > len(chosen):
            raise SecateursError(f"{docs.name} has {len(chosen)} documents; cannot draw {samples} samples")
        chosen = [chosen[i] for i in random.Random(seed).sample(range(len(chosen)), samples)]
    text = DOCUMENT_SEPARATOR.join(d.text for d in chosen)
    if not text.strip():
        raise SecateursError(f"{docs.name}: no usable text (0 tokens; need at least {seqlen} for one window)")
    ids = tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
    n_windows = len(ids) // seqlen
    if n_windows == 0:
        raise SecateursError(
            f"{docs.name}: found {len(ids)} tokens, need at least {seqlen} for one window of --seqlen {seqlen}"
        )
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    windows = torch.tensor(ids[: n_windows * seqlen], dtype=torch.long).view(n_windows, seqlen)
    protocol = {
        "dataset": docs.name,
        "split": docs.split,
        "data_dir": docs.data_dir,
        "files": docs.files,
        "separator": DOCUMENT_SEPARATOR,
        "documents": len(chosen),
        "sample_ids": [d.id for d in chosen] if samples is not None else None,
        "samples": samples,
        "seed": seed if samples is not None else None,
        "seqlen": seqlen,
        "stride": seqlen,
        "tokens_in_stream": len(ids),
        "windows": n_windows,
        "tokens_used": n_windows * seqlen,
        "max_windows": max_windows,
        "token_sha256": token_sha256(windows),
    }
    return TokenWindows(windows, protocol)


def calibration_windows(
    spec: str,
    tokenizer: Any,
    seqlen: int,
    data_dir: str | os.PathLike | None = None,
    samples: int | None = None,
    seed: int = 0,
    max_windows: int | None = None,
    text_field: str = "text",
) -> TokenWindows:
    """Named set or file -> token windows, in one call."""
    docs = load_documents(spec, data_dir, text_field)
    return make_windows(docs, tokenizer, seqlen, samples=samples, seed=seed, max_windows=max_windows)
