"""Documents and how they are read: plain-text lines, JSONL rows rendered to text, local files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import SecateursError
from ..files import sha256_file

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


def legalbench_label(row: dict) -> str:
    """A LegalBench row's answer: its ``label`` field, else its ``answer`` field (tasks use one or the other)."""
    return str(row.get("label") or row.get("answer") or "")


def render_legalbench_with_answer(row: dict) -> str:
    return f"{row['text']}\nAnswer: {legalbench_label(row)}"


# --- readers -----------------------------------------------------------------------------------
def _missing(path: Path) -> SecateursError:
    return SecateursError(f"data file not found: {path} (is the data directory right?)")


def check_utf8(path: Path) -> None:
    """Fail, naming the file and line, if ``path`` is not UTF-8 text (read as bytes, a line at a time)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SecateursError(f"{path}:{number}: not UTF-8 text (byte 0x{line[exc.start]:02x} at column "
                                     f"{exc.start + 1}); save the file as UTF-8") from exc


def _text_lines(path: Path) -> Iterable[str]:
    """The lines of a UTF-8 text file; a file that is not UTF-8 is one error naming the line."""
    try:
        with open(path, encoding="utf-8") as handle:
            yield from handle
    except UnicodeDecodeError:
        check_utf8(path)  # names the first line that is not UTF-8
        raise


def read_lines(path: Path, prefix: str = "") -> list[Document]:
    """One document per line, empty lines included (as Hugging Face's WikiText rows)."""
    if not path.is_file():
        raise _missing(path)
    return [Document(f"{prefix}{i}", line.rstrip("\n")) for i, line in enumerate(_text_lines(path))]


def read_jsonl_rows(path: Path) -> Iterable[tuple[int, dict]]:
    """Yield (line number, row), with a clear error naming the file and line for bad JSON."""
    if not path.is_file():
        raise _missing(path)
    for number, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SecateursError(f"{path}:{number}: malformed JSON: {exc.msg} at column {exc.colno}") from exc
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
