"""Save structurally pruned models so that they reload with one call and are really smaller.

- Whole layers removed only: the layers are dropped and renumbered, giving a plain transformers
  checkpoint with fewer layers (``AutoModelForCausalLM.from_pretrained`` loads it with no extra code).
- Single MHA/MLP blocks removed: the removed blocks' weights are absent from the safetensors files and
  ``config.json`` records them under ``secateurs_pruning``; :func:`secateurs.load_pruned` (or
  ``secateurs eval DIR``) rebuilds the model and skips those blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .adapter import Block, ModelAdapter

CONFIG_KEY = "secateurs_pruning"


def whole_layers(blocks: list[Block]) -> list[int]:
    """Layers whose MHA and MLP blocks are both in ``blocks``."""
    names = set(blocks)
    return sorted({b.layer for b in blocks if Block("mha", b.layer) in names and Block("mlp", b.layer) in names})


def drop_layers(adapter: ModelAdapter, layers: list[int]) -> None:
    """Physically remove whole decoder layers and renumber the rest (config, cache indices included)."""
    config = adapter.model.config
    keep = [i for i in range(adapter.num_layers) if i not in set(layers)]
    adapter.decoder.layers = nn.ModuleList([adapter.layers[i] for i in keep])
    adapter.layers = adapter.decoder.layers
    for new_index, layer in enumerate(adapter.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)


def save_pruned(adapter: ModelAdapter, tokenizer: Any, removed: list[Block], directory: Path,
                info: dict[str, Any]) -> dict[str, Any]:
    """Remove ``removed`` from the model in place and save it to ``directory``; return the record."""
    layers = whole_layers(removed)
    record: dict[str, Any] = {**info, "original_num_layers": adapter.num_layers}
    if removed and len(removed) == 2 * len(layers):
        drop_layers(adapter, layers)
        record.update(format="fewer-layers", removed_layers=layers, removed_blocks=[])
    else:
        adapter.remove_blocks(removed)
        record.update(format="skipped-blocks", removed_layers=[], removed_blocks=[b.name for b in sorted(removed)])
    setattr(adapter.model.config, CONFIG_KEY, record)
    adapter.model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return record
