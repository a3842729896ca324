"""What every engine format needs to know about a pruned model: which layers are written, and what the
engines cannot express.

Both engine formats (llama.cpp's ``deci`` GGUF, vLLM's ``nemotron-nas``) describe a decoder layer as an
optional attention block and an optional MLP block, so a pruned model maps onto them layer by layer:
a layer whose two blocks are both gone is left out, the others keep what they have. Both engines also
fail on a model whose first layer has no attention (llama.cpp does not load it; vLLM 0.32 crashes on the
missing residual), so that layer's removed attention is written as a *zero attention*: all-zero weights,
whose output is exactly 0, as if the block were absent.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SecateursError
from ..models.adapter import Block, ModelAdapter

# What each family has that an engine's Llama-like decoder layer cannot express.
BEYOND_LLAMA_LAYERS = {
    "gemma3_text": "sandwich norms, scaled embeddings, q/k norms, GELU MLPs and sliding-window layers",
}


@dataclass(frozen=True)
class KeptLayer:
    """One decoder layer as an engine format writes it."""

    layer: int  # its index in the pruned model
    has_attention: bool  # its attention block is there
    has_mlp: bool  # its MLP block is there
    zero_attention: bool  # its attention was removed but is written as zeros (it is the first layer written)

    @property
    def writes_attention(self) -> bool:
        return self.has_attention or self.zero_attention


def kept_layers(adapter: ModelAdapter, engine: str) -> list[KeptLayer]:
    """The layers an engine format writes, in order (whole layers removed are left out)."""
    kept: list[KeptLayer] = []
    for i in range(adapter.num_layers):
        attention, mlp = not adapter.is_removed(Block("mha", i)), not adapter.is_removed(Block("mlp", i))
        if attention or mlp:
            kept.append(KeptLayer(i, attention, mlp, zero_attention=not attention and not kept))
    if not kept:
        raise SecateursError(f"{engine} export: the model has no decoder layer left")
    return kept


def check_llama_like(adapter: ModelAdapter, engine: str, fmt: str) -> None:
    """Fail now, naming what ``engine`` lacks, for a model its Llama-like per-layer format cannot express."""
    if adapter.family in BEYOND_LLAMA_LAYERS:
        raise SecateursError(f"{fmt} export: {engine} has no {BEYOND_LLAMA_LAYERS[adapter.family]} in this format, "
                             f"which {adapter.family} models need; export --format hf instead")
    dims = adapter.dimensions()
    if dims.sliding_window is not None:
        raise SecateursError(f"{fmt} export: this model attends within a sliding window of {dims.sliding_window} "
                             f"tokens, which {engine}'s format does not express; export --format hf instead")
    if dims.hidden_act != "silu":
        raise SecateursError(f"{fmt} export: {engine}'s format has SiLU-gated MLPs, this model uses "
                             f"{dims.hidden_act}; export --format hf instead")
