"""A GGUF tokenizer for llama.cpp, built from a Hugging Face (``tokenizers``) byte-level BPE tokenizer.

llama.cpp's ``gpt2`` tokenizer model takes the vocabulary in id order, each token's type, the merges in
rank order, the special ids, and the name of a pre-tokenizer (the regular expressions that split text
before BPE) that llama.cpp knows. The pre-tokenizer is recognised from the structure of
``tokenizer.json``; one llama.cpp does not know is refused rather than guessed, since a wrong one
tokenises some texts differently. Used when the source model is not a GGUF file (otherwise the source
GGUF's tokenizer is copied as it is).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import SecateursError

# llama.cpp's token types (llama_token_type)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# The Split regexes of byte-level BPE families, as their tokenizer.json writes them, by llama.cpp's pre name.
SPLIT_PATTERNS = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


@dataclass
class GGUFTokenizer:
    """What llama.cpp's ``gpt2`` tokenizer model reads from a GGUF file."""

    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos, eos, unk, pad -> id
    add_bos: bool
    chat_template: str | None

    def write(self, writer: Any) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
                  "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
        for kind, token_id in self.special_ids.items():
            adders[kind](token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_space_prefix(False)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def _pre_name(pre: dict | None) -> str | None:
    """llama.cpp's name for a tokenizer.json pre-tokenizer, or None when it has none that matches."""
    if not pre:
        return None
    parts = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if not kinds:
        return None
    byte_level = parts[-1] if kinds[-1] == "ByteLevel" else None
    if byte_level is None or byte_level.get("add_prefix_space"):
        return None
    if kinds == ["ByteLevel"] and byte_level.get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and byte_level.get("use_regex", True):
        return "smollm"
    split = parts[0]
    if kinds == ["Split", "ByteLevel"] and not byte_level.get("use_regex", True) and not split.get("invert") \
            and split.get("behavior") == "Isolated":
        pattern = parts[0].get("pattern", {}).get("Regex")
        return next((name for name, regex in SPLIT_PATTERNS.items() if regex == pattern), None)
    return None


def from_hf_tokenizer(tokenizer: Any, vocab_rows: int) -> GGUFTokenizer:
    """Build the GGUF tokenizer of a Hugging Face fast tokenizer (byte-level BPE only) for a model with
    ``vocab_rows`` embedding rows (rows beyond the tokenizer's ids are unused padding tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise SecateursError("GGUF export: the tokenizer is not a fast (tokenizers) tokenizer; export from a GGUF "
                             "source or --format hf")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise SecateursError("GGUF export: only byte-level BPE tokenizers (GPT-2, SmolLM, Qwen2, Llama 3 style) are "
                             "converted; this one is not (export from a GGUF source or --format hf)")
    pre = _pre_name(spec.get("pre_tokenizer"))
    if pre is None:
        raise SecateursError(f"GGUF export: llama.cpp knows no pre-tokenizer matching this tokenizer's "
                             f"({json.dumps(spec.get('pre_tokenizer'))[:120]}); export --format hf")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {a["content"]: a for a in spec.get("added_tokens", [])}
    vocab.update({content: a["id"] for content, a in added.items()})
    if max(len(tokenizer), max(vocab.values()) + 1) > vocab_rows:
        raise SecateursError(f"GGUF export: the tokenizer has {max(len(tokenizer), max(vocab.values()) + 1)} ids but "
                             f"the model only {vocab_rows} embedding rows; export --format hf")
    size = vocab_rows
    by_id = {token_id: token for token, token_id in vocab.items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    types = [(CONTROL if added[t]["special"] else USER_DEFINED) if t in added else NORMAL if i in by_id else UNUSED
             for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if not merges:
        raise SecateursError("GGUF export: the tokenizer has no BPE merges, which llama.cpp requires; export --format hf")
    special = {kind: getattr(tokenizer, f"{kind}_token_id", None) for kind in ("bos", "eos", "unk", "pad")}
    probe = tokenizer("a")["input_ids"]
    return GGUFTokenizer(pre=pre, tokens=tokens, token_types=types, merges=merges,
                         special_ids={k: v for k, v in special.items() if v is not None},
                         add_bos=bool(probe) and special["bos"] is not None and probe[0] == special["bos"],
                         chat_template=getattr(tokenizer, "chat_template", None))
