"""Shared fixtures: tiny random models of every supported family, a byte-level tokenizer, data paths."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never reach the Hugging Face hub: a hub id that is not cached fails at once. Set before
# transformers / huggingface_hub are imported, since they read it at import time.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

REPO = Path(__file__).resolve().parents[1]

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=260, max_position_embeddings=256)


def tiny_config(family: str, tie: bool = False):
    """A tiny random config of ``family`` with grouped-query attention (4 query heads, 2 KV heads)."""
    if family == "llama":
        return LlamaConfig(**TINY, tie_word_embeddings=tie)
    if family == "mistral":
        return MistralConfig(**TINY, tie_word_embeddings=tie, sliding_window=None)
    if family == "qwen2":
        return Qwen2Config(**TINY, tie_word_embeddings=tie)
    if family == "gemma3_text":
        return Gemma3TextConfig(**TINY, head_dim=16, tie_word_embeddings=tie, sliding_window=32,
                                layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    raise ValueError(family)


FAMILIES = ["llama", "mistral", "qwen2", "gemma3_text"]


def tiny_model(family: str, tie: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, tie), attn_implementation="eager")
    # Random norm weights, so a test notices a norm that is applied twice or not at all.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def make_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: one token per UTF-8 byte, plus BOS/EOS/UNK."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def make_bpe_tokenizer(vocab_size: int, sentences: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE with merges learnt from ``sentences`` (GGUF export needs merges; the byte tokenizer
    above has none)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(sentences * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def byte_tokenizer() -> PreTrainedTokenizerFast:
    return make_byte_tokenizer()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data directory: $SECATEURS_DATA, else ../shared/data beside the repository."""
    path = Path(os.environ.get("SECATEURS_DATA") or REPO.parent / "shared" / "data")
    if not path.is_dir():
        pytest.fail(f"test data directory not found: {path} (set SECATEURS_DATA)")
    return path


@pytest.fixture
def tiny_model_dir(tmp_path, byte_tokenizer) -> Path:
    """A saved tiny Llama model with its tokenizer, loadable by path."""
    path = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(path)
    byte_tokenizer.save_pretrained(path)
    return path


def cli_error(capsys, *argv) -> str:
    """Run the CLI quietly; assert it failed with one clean `error:` line (exit 2) and return that line."""
    from secateurs.cli import main

    capsys.readouterr()
    code = main(["--quiet", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


ENGINE_SHAPE = dict(hidden_size=128, intermediate_size=192, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=256, rms_norm_eps=1e-5)  # head_dim 32: vLLM's CPU attention needs >= 32


def peaky_model(family: str, layers: int = 4, vocab_size: int = 260, seed: int = 0, **config):
    """A tiny random model for engine tests: weights large enough that wrong wiring shows in the logits
    (norm weights around 1, biases of Qwen2 clearly non-zero)."""
    classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
    extra = {"sliding_window": None} if family == "mistral" else {}
    torch.manual_seed(seed)
    cfg = classes[family](**{**ENGINE_SHAPE, **extra, **config}, num_hidden_layers=layers, vocab_size=vocab_size)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1.5 / p.shape[1] ** 0.5)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.5)
    return model
