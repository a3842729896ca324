"""Fixed-length token windows cut from documents, with the protocol that made them.

Protocol (the pruning papers'): join the documents with "\\n\\n", tokenise once, cut into
non-overlapping windows of ``seqlen`` tokens and drop the tail. Every window set records which
documents went in (ids), the files and their sha256, and the sha256 of the token stream used.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SecateursError
from .catalogue import load_documents
from .readers import DocumentSet

DOCUMENT_SEPARATOR = "\n\n"


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


def token_windows(
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
