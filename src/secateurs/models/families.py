"""The model families secateurs supports, and where each keeps its blocks inside a decoder layer.

A family is described by one :class:`LayerLayout`: the attribute names of the attention and MLP
sub-modules and of the norms that belong to each block. Families that share a structure share a
layout (Llama, Mistral and Qwen2 are all pre-norm).

Adding a family: find its ``config.model_type`` and the names in its decoder layer (print one layer);
if it matches a layout below, add ``"model_type": LAYOUT`` to ``SUPPORTED_FAMILIES``, otherwise add a
new ``LayerLayout``. Then add a tiny random config for it to ``tests/conftest.py``: the adapter, KV-cache
and export tests run for every family there. Nothing outside ``models/`` needs to change, unless the
family calls its layers differently (see ``ModelAdapter.layer_input``) or keeps its layers elsewhere
than ``model.get_decoder().layers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

BlockKind = Literal["mha", "mlp"]


@dataclass(frozen=True)
class LayerLayout:
    """Attribute names inside one decoder layer, per block."""

    name: str
    attention: str
    mlp: str
    attention_norms: tuple[str, ...]
    mlp_norms: tuple[str, ...]

    def submodule(self, kind: BlockKind) -> str:
        return self.attention if kind == "mha" else self.mlp

    def norms(self, kind: BlockKind) -> tuple[str, ...]:
        return self.attention_norms if kind == "mha" else self.mlp_norms


PRE_NORM = LayerLayout("pre-norm", "self_attn", "mlp", ("input_layernorm",), ("post_attention_layernorm",))
SANDWICH_NORM = LayerLayout(
    "sandwich-norm",
    "self_attn",
    "mlp",
    ("input_layernorm", "post_attention_layernorm"),
    ("pre_feedforward_layernorm", "post_feedforward_layernorm"),
)
# Each projection of a decoder layer by role, as its block and the name inside that block (all families).
PROJECTIONS: dict[str, tuple[str, str]] = {
    "q": ("mha", "q_proj"), "k": ("mha", "k_proj"), "v": ("mha", "v_proj"), "o": ("mha", "o_proj"),
    "gate": ("mlp", "gate_proj"), "up": ("mlp", "up_proj"), "down": ("mlp", "down_proj"),
}

# Families tested on tiny random configs, by ``config.model_type``; the layout is chosen from the
# layer's structure (which norms it holds) and must agree with the family's.
SUPPORTED_FAMILIES: dict[str, LayerLayout] = {
    "llama": PRE_NORM,
    "mistral": PRE_NORM,
    "qwen2": PRE_NORM,
    "gemma3_text": SANDWICH_NORM,
}


def layout_from_structure(layer: nn.Module) -> LayerLayout | None:
    for layout in (SANDWICH_NORM, PRE_NORM):
        names = (layout.attention, layout.mlp, *layout.attention_norms, *layout.mlp_norms)
        if all(isinstance(getattr(layer, n, None), nn.Module) for n in names):
            return layout
    return None
