"""The named data sets (WikiText-2, C4, Alpaca, the domain sets, ...), where their files are, and the
data directory they are read from (``--data-dir``, ``$SECATEURS_DATA``, else the Hugging Face hub)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import SecateursError
from ..files import sha256_file
from .readers import (
    Document,
    DocumentSet,
    check_utf8,
    load_file,
    read_jsonl,
    read_jsonl_rows,
    read_lines,
    render_alpaca,
    render_legalbench_with_answer,
    render_medquad,
    render_pubmedqa_with_answer,
)

DATA_DIR_ENV = "SECATEURS_DATA"

# Every file read from the data directory, by role (the named sets below and the evaluation tasks).
DATA_FILES: dict[str, str] = {
    "wikitext2_test": "text/wikitext2/test.txt",
    "wikitext2_valid": "text/wikitext2/valid.txt",
    "ptb_test": "text/ptb/test.txt",
    "ptb_valid": "text/ptb/valid.txt",
    "c4": "text/c4/validation_2k.jsonl",
    "alpaca": "text/alpaca/alpaca_200.jsonl",
    "alpaca_libre": "text/alpaca_libre/tasks.jsonl",
    "medquad": "text/medquad/qa.jsonl",
    "piqa": "tasks/piqa.jsonl",
    "arc_easy": "tasks/arc_easy.jsonl",
    "arc_challenge": "tasks/arc_challenge.jsonl",
    "hellaswag": "tasks/hellaswag.jsonl",
    "winogrande": "tasks/winogrande.jsonl",
    "openbookqa": "tasks/openbookqa.jsonl",
    "pubmedqa": "tasks/pubmedqa.jsonl",
    "meqsum": "tasks/meqsum.jsonl",
    "legalbench": "tasks/legalbench.jsonl",
}


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
    return read_jsonl(root / DATA_FILES["alpaca"], render_alpaca, "alpaca:") + read_jsonl(
        root / DATA_FILES["alpaca_libre"], render_alpaca, "alpaca_libre:"
    )


def _legalbench_train(root: Path) -> list[Document]:
    """LegalBench train rows with their answers, minus any whose text is also a test row's (206 are)."""
    path = root / DATA_FILES["legalbench"]
    test_texts = {row.get("text") for _, row in read_jsonl_rows(path) if row.get("split") == "test"}
    return read_jsonl(path, render_legalbench_with_answer, "legalbench:",
                      where=lambda r: r.get("split") == "train" and r.get("text") not in test_texts)


def _healthcare_train(root: Path) -> list[Document]:
    """PubMedQA train rows with decision and long answer, then MedQuAD question/answer pairs."""
    return read_jsonl(root / DATA_FILES["pubmedqa"], render_pubmedqa_with_answer, "pubmedqa:",
                      where=_split_is("train")) + read_jsonl(root / DATA_FILES["medquad"], render_medquad, "medquad:")


def _pubmedqa_test_contexts(root: Path) -> list[Document]:
    return read_jsonl(root / DATA_FILES["pubmedqa"], lambda r: r["context"], "pubmedqa:", where=_split_is("test"))


def _legalbench_test_texts(root: Path) -> list[Document]:
    return read_jsonl(root / DATA_FILES["legalbench"], lambda r: r["text"], "legalbench:", where=_split_is("test"))


NAMED_SETS: dict[str, NamedSet] = {
    s.name: s
    for s in [
        NamedSet("wikitext2", "WikiText-2 (tokenized variant), one document per line", {
            "test": _lines(DATA_FILES["wikitext2_test"], "test lines"),
            "valid": _lines(DATA_FILES["wikitext2_valid"], "validation lines"),
        }),
        NamedSet("ptb", "Penn Treebank (Mikolov preprocessing), one sentence per line", {
            "test": _lines(DATA_FILES["ptb_test"], "test sentences"),
            "valid": _lines(DATA_FILES["ptb_valid"], "validation sentences"),
        }),
        NamedSet("c4", "C4 English validation documents (2,000-document sample)", {
            "validation": Split((DATA_FILES["c4"],),
                                lambda root: read_jsonl(root / DATA_FILES["c4"], lambda r: r["text"]),
                                "documents"),
        }),
        NamedSet("alpaca", "Alpaca + alpaca-libre instructions, rendered with the Alpaca prompt template", {
            "train": Split((DATA_FILES["alpaca"], DATA_FILES["alpaca_libre"]), _alpaca,
                           "instruction, input and response"),
        }),
        NamedSet("medquad", "MedQuAD consumer-health question/answer pairs", {
            "train": Split((DATA_FILES["medquad"],),
                           lambda root: read_jsonl(root / DATA_FILES["medquad"], render_medquad), "Q + A"),
        }),
        NamedSet("pubmedqa", "PubMedQA PQA-L", {
            "train": Split((DATA_FILES["pubmedqa"],),
                           lambda root: read_jsonl(root / DATA_FILES["pubmedqa"], render_pubmedqa_with_answer,
                                                   "pubmedqa:", where=_split_is("train")),
                           "train rows: context, question, decision and long answer"),
            "test": Split((DATA_FILES["pubmedqa"],), _pubmedqa_test_contexts,
                          "test rows: abstracts only (held-out domain text)"),
        }),
        NamedSet("legalbench", "LegalBench 2023-03 snapshot", {
            "train": Split((DATA_FILES["legalbench"],), _legalbench_train,
                           "train rows: text and answer (rows whose text is also in test left out)"),
            "test": Split((DATA_FILES["legalbench"],), _legalbench_test_texts,
                          "test rows: texts only (held-out domain text)"),
        }),
        NamedSet("healthcare", "D-Pruner healthcare domain: calibration (train) and held-out text (test)", {
            "train": Split((DATA_FILES["pubmedqa"], DATA_FILES["medquad"]), _healthcare_train,
                           "PubMedQA train rows with answers + MedQuAD Q/A pairs"),
            "test": Split((DATA_FILES["pubmedqa"],), _pubmedqa_test_contexts, "PubMedQA test abstracts"),
        }),
        NamedSet("legal", "D-Pruner legal domain: calibration (train) and held-out text (test)", {
            "train": Split((DATA_FILES["legalbench"],), _legalbench_train, "LegalBench train rows with answers"),
            "test": Split((DATA_FILES["legalbench"],), _legalbench_test_texts, "LegalBench test texts"),
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


FILE_SUFFIXES = (".txt", ".jsonl", ".json")


def _resolve_spec(spec: str) -> tuple[Path | None, NamedSet | None, str | None]:
    """A local file's path, or the named set and split ``spec`` names (an unknown name or split is an error)."""
    path = Path(spec).expanduser()
    if path.suffix in FILE_SUFFIXES or path.exists():
        return path, None, None
    name, split = _parse_spec(spec)
    if name not in NAMED_SETS:
        raise SecateursError(
            f"unknown dataset '{name}'; named sets: {', '.join(NAMED_SETS)} (or a .txt/.jsonl file path)"
        )
    named = NAMED_SETS[name]
    split = split or named.default_split
    if split not in named.splits:
        raise SecateursError(f"dataset '{name}' has no split '{split}'; splits: {', '.join(named.splits)}")
    return None, named, split


def check_source(spec: str, data_dir: str | os.PathLike | None = None) -> None:
    """Fail now, without reading it, if ``spec`` (a named set, ``name:split`` or a file) cannot be read."""
    path, named, split = _resolve_spec(spec)
    if path is not None:
        if not path.is_file():
            raise SecateursError(f"data file not found: {path}")
        check_utf8(path)
        return
    root = resolve_data_dir(data_dir)
    if root is None:
        if named.name not in HUB_SOURCES or split not in HUB_SOURCES[named.name][2]:
            _from_hub(named.name, split)  # raises the error that explains what is missing
        return
    missing = [rel for rel in named.splits[split].files if not (root / rel).is_file()]
    if missing:
        raise SecateursError(f"data file not found: {root / missing[0]} (is the data directory right?)")


def load_documents(spec: str, data_dir: str | os.PathLike | None = None, text_field: str = "text") -> DocumentSet:
    """Documents of a named set (``wikitext2``, ``pubmedqa:test``) or a local .txt/.jsonl file."""
    path, named, split = _resolve_spec(spec)
    if path is not None:
        return load_file(path, text_field)
    root = resolve_data_dir(data_dir)
    if root is None:
        return _from_hub(named.name, split)
    entry = named.splits[split]
    docs = entry.read(root)
    files = {rel: sha256_file(root / rel) for rel in entry.files}
    return DocumentSet(named.name, split, docs, files, str(root.resolve()))


def describe_data(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every named set and split, the files it reads and whether they exist in the data directory."""
    root = resolve_data_dir(data_dir)
    rows = []
    for named in NAMED_SETS.values():
        for split, entry in named.splits.items():
            paths = [root / rel for rel in entry.files] if root else []
            rows.append({
                "name": named.name,
                "split": split,
                "default": split == named.default_split,
                "description": f"{named.description}: {entry.description}",
                "files": [str(p) for p in paths] or list(entry.files),
                "available": bool(paths) and all(p.is_file() for p in paths),
            })
    return rows
