"""The on-disk format of pruned models: how each kind is saved, and how a saved one is put back.

Every pruned directory is a transformers checkpoint (safetensors, no pickles) whose ``config.json``
records what was done under ``secateurs_pruning``:

- Whole layers removed only: the layers are dropped and renumbered, giving a plain transformers
  checkpoint with fewer layers (``AutoModelForCausalLM.from_pretrained`` loads it with no extra code).
- Single MHA/MLP blocks removed: the removed blocks' weights are absent from the safetensors files and
  ``config.json`` records them under ``secateurs_pruning``; :func:`secateurs.load_pruned` (or
  ``secateurs eval DIR``) rebuilds the model and skips those blocks.
- Unstructured methods: the zeros are stored as dense weights ("dense-zeros"); transformers loads the
  directory as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import SecateursError
from .adapter import Block, ModelAdapter

CONFIG_KEY = "secateurs_pruning"


def whole_layers(blocks: list[Block]) -> list[int]:
    """Layers whose MHA and MLP blocks are both in ``blocks``."""
    names = set(blocks)
    return sorted({b.layer for b in blocks if Block("mha", b.layer) in names and Block("mlp", b.layer) in names})


def save_pruned(adapter: ModelAdapter, tokenizer: Any, removed: list[Block], directory: Path,
                info: dict[str, Any]) -> dict[str, Any]:
    """Remove ``removed`` from the model in place and save it to ``directory``; return the record."""
    layers = whole_layers(removed)
    record: dict[str, Any] = {**info, "original_num_layers": adapter.num_layers}
    if removed and len(removed) == 2 * len(layers):
        adapter.drop_layers(layers)
        record.update(format="fewer-layers", removed_layers=layers, removed_blocks=[])
    else:
        adapter.remove_blocks(removed)
        record.update(format="skipped-blocks", removed_layers=[], removed_blocks=[b.name for b in sorted(removed)])
    setattr(adapter.model.config, CONFIG_KEY, record)
    adapter.model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return record


def save_dense_zeros(lm: Any, directory: Path, info: dict[str, Any]) -> None:
    """Save a model whose pruned weights are zeros, as it is (the zeros are stored).

    Streamed weights (``--offload disk``) are written shard by shard, never all in memory.
    """
    setattr(lm.model.config, CONFIG_KEY, {"format": "dense-zeros", **info, "removed_blocks": []})
    if lm.weights is not None and lm.weights.streamed:
        lm.model.config.save_pretrained(directory)
        if getattr(lm.model, "generation_config", None) is not None:
            lm.model.generation_config.save_pretrained(directory)
        lm.weights.save(directory)
    else:
        lm.model.save_pretrained(directory)
    lm.tokenizer.save_pretrained(directory)


def pruning_record(directory: Path) -> dict[str, Any]:
    """What ``config.json`` of a model directory says was pruned ({} for a model secateurs did not prune)."""
    return json.loads((directory / "config.json").read_text()).get(CONFIG_KEY) or {}


def removed_blocks(record: dict[str, Any]) -> list[Block]:
    """The blocks a saved model lacks (and must skip when it is loaded again)."""
    return [Block.parse(name) for name in record.get("removed_blocks", [])]


def restore_removed(model: Any, removed: list[Block], missing_keys: list[str], directory: Path) -> None:
    """Skip ``removed`` in a model loaded from ``directory``; any other missing weight means damage.

    The removed blocks' weights are absent from the files, so transformers initialised them; they
    are dropped again here.
    """
    adapter = ModelAdapter(model)
    allowed = tuple(f"{name}." for block in removed for name in adapter.block_module_names(block))
    unexpected = [key for key in missing_keys if not key.startswith(allowed)]
    if unexpected:
        raise SecateursError(f"pruned model directory {directory} is missing weights: {', '.join(sorted(unexpected)[:5])}")
    adapter.remove_blocks(removed)

