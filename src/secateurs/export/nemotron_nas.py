"""nemotron-nas (NVIDIA's DeciLM) for vLLM: a pruned model as a checkpoint vLLM's built-in
``DeciLMForCausalLM`` serves (``vllm serve DIR --trust-remote-code``).

``config.json`` has one ``block_configs`` entry per written layer: ``attention`` (``no_op``,
``n_heads_in_group`` = heads per KV head) and ``ffn`` (``no_op``, and its width). vLLM derives the MLP width
from ``ffn_mult`` as ``int(2 * ffn_mult * hidden / 3)`` rounded up to a multiple of 256; we write the
``ffn_mult`` that gives the model's width back exactly when there is one (every reader of the format
understands it), else ``intermediate_size``, which vLLM reads when ``ffn_mult`` is absent. vLLM has no
config class for this model type, so the export carries ours (``configuration_decilm.py``, referenced
from ``auto_map``): the only code ``--trust-remote-code`` runs from it. Weights keep Hugging Face's names
and rope layout (vLLM's DeciLM is Llama's attention); q/k/v biases (Qwen2) are ``qkv_bias``, an output
bias ``attention_bias``. Layers are planned by :mod:`.layers` (vLLM 0.32 crashes on a first layer without
attention, so that one is written as a zero attention). :class:`NemotronNASExporter` is the
``nemotron-nas`` format of :mod:`.registry`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import SecateursError
from ..files import atomic_directory
from ..models.adapter import Block, ModelAdapter
from ..models.loading import LoadedModel
from .exporter import Exporter
from .layers import check_llama_like, kept_layers

ENGINE = "vLLM's nemotron-nas model (DeciLMForCausalLM)"
MODEL_TYPE = "nemotron-nas"
ARCHITECTURE = "DeciLMForCausalLM"
CONFIG_MODULE = "configuration_decilm"  # the file this package ships and every export carries
WEIGHTS_FILE = "model.safetensors"
FFN_ROUNDING = 256  # vLLM rounds the width it derives from ffn_mult up to a multiple of this
ATTENTION = ("q", "k", "v", "o")
MLP = ("gate", "up", "down")

# The checkpoint's tensor names (the format's, which are Llama's, not the model's); a layer's are
# model.layers.{written layer}.{name}.
EMBEDDINGS, FINAL_NORM, LM_HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"
ATTENTION_NORM, MLP_NORM = "input_layernorm.weight", "post_attention_layernorm.weight"
PROJECTION_TENSORS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
                      "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}  # by projection role


def _layer_prefix(layer: int) -> str:
    return f"model.layers.{layer}"


def width_from_ffn_mult(ffn_mult: float, hidden: int) -> int:
    """The MLP width vLLM (and DeciLM's own code) derives from ``ffn_mult``."""
    width = int(2 * ffn_mult * hidden / 3)
    return width if width % FFN_ROUNDING == 0 else width + FFN_ROUNDING - width % FFN_ROUNDING


def ffn_entry(width: int, hidden: int) -> dict[str, Any]:
    """The ``ffn`` sizes of a block config: ``ffn_mult`` when it round-trips exactly, else ``intermediate_size``."""
    ffn_mult = 3 * width / (2 * hidden)
    if width_from_ffn_mult(ffn_mult, hidden) == width:
        return {"ffn_mult": ffn_mult}
    return {"intermediate_size": width}


def check_exportable(adapter: ModelAdapter) -> None:
    """Fail now, with what vLLM's nemotron-nas lacks, for a model it cannot express."""
    check_llama_like(adapter, ENGINE, MODEL_TYPE)
    dims = adapter.dimensions()
    if dims.heads % dims.kv_heads:
        raise SecateursError(f"{MODEL_TYPE} export: {dims.heads} attention heads are not a multiple of "
                             f"{dims.kv_heads} KV heads")


def _has_bias(adapter: ModelAdapter, roles: tuple[str, ...]) -> bool:
    return any(getattr(adapter.projection(i, r), "bias", None) is not None
               for i in range(adapter.num_layers) for r in roles if adapter.projection(i, r) is not None)


def _config(adapter: ModelAdapter, blocks: list[dict[str, Any]], dtype: torch.dtype) -> dict[str, Any]:
    c, dims = adapter.model.config, adapter.dimensions()
    rope = getattr(c, "rope_parameters", None) or {"rope_type": "default", "rope_theta": dims.rope_theta}
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
        "auto_map": {"AutoConfig": f"{CONFIG_MODULE}.DeciLMConfig"},
        "hidden_size": dims.hidden, "num_hidden_layers": len(blocks), "num_attention_heads": dims.heads,
        "num_key_value_heads": dims.kv_heads, "head_dim": dims.head_dim, "intermediate_size": dims.intermediate,
        "hidden_act": dims.hidden_act, "rms_norm_eps": dims.norm_eps, "vocab_size": dims.vocab,
        "max_position_embeddings": dims.max_positions, "rope_parameters": dict(rope), "rope_theta": dims.rope_theta,
        "tie_word_embeddings": dims.tied, "attention_bias": _has_bias(adapter, ("o",)),
        "qkv_bias": _has_bias(adapter, ("q", "k", "v")), "mlp_bias": _has_bias(adapter, MLP),
        "bos_token_id": getattr(c, "bos_token_id", None), "eos_token_id": getattr(c, "eos_token_id", None),
        "pad_token_id": getattr(c, "pad_token_id", None), "torch_dtype": str(dtype).removeprefix("torch."),
        "block_configs": blocks,
    }


def _zero_attention(adapter: ModelAdapter, prefix: str, dtype: torch.dtype, biases: dict[str, bool]) -> dict[str, torch.Tensor]:
    """A removed first attention block as zeros: its output is exactly 0."""
    d = adapter.dimensions()
    shapes = {"q": (d.heads * d.head_dim, d.hidden), "k": (d.kv_heads * d.head_dim, d.hidden),
              "v": (d.kv_heads * d.head_dim, d.hidden), "o": (d.hidden, d.heads * d.head_dim)}
    tensors = {f"{prefix}.{ATTENTION_NORM}": torch.ones(d.hidden, dtype=dtype)}
    for role, shape in shapes.items():
        tensors[f"{prefix}.{PROJECTION_TENSORS[role]}.weight"] = torch.zeros(shape, dtype=dtype)
        if biases[role]:
            tensors[f"{prefix}.{PROJECTION_TENSORS[role]}.bias"] = torch.zeros(shape[0], dtype=dtype)
    return tensors


def _projections(adapter: ModelAdapter, layer: int, prefix: str, roles: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Layer ``layer``'s projections ``roles`` (weight, and bias where there is one) under the format's names."""
    return {f"{prefix}.{PROJECTION_TENSORS[role]}.{key}": value for role in roles
            for key, value in adapter.projection(layer, role).state_dict().items()}


def write_nemotron_nas(adapter: ModelAdapter, tokenizer: Any, path: str | Path, name: str = "pruned",
                       overwrite: bool = False) -> dict[str, Any]:
    """Write ``adapter.model`` (blocks removed or not) as a nemotron-nas checkpoint directory."""
    from safetensors.torch import save_file

    check_exportable(adapter)
    dims, layers = adapter.dimensions(), kept_layers(adapter, MODEL_TYPE)
    dtype = adapter.embeddings.weight.dtype
    biases = {role: _has_bias(adapter, (role,)) for role in ATTENTION}
    tensors: dict[str, torch.Tensor] = {EMBEDDINGS: adapter.embeddings.weight, FINAL_NORM: adapter.final_norm.weight}
    if not dims.tied:
        tensors[LM_HEAD] = adapter.lm_head.weight
    blocks = []
    for n, kept in enumerate(layers):
        prefix = _layer_prefix(n)
        if kept.zero_attention:
            tensors.update(_zero_attention(adapter, prefix, dtype, biases))
        elif kept.has_attention:
            tensors[f"{prefix}.{ATTENTION_NORM}"] = adapter.norm(Block("mha", kept.layer)).weight
            tensors.update(_projections(adapter, kept.layer, prefix, ATTENTION))
        if kept.has_mlp:
            tensors[f"{prefix}.{MLP_NORM}"] = adapter.norm(Block("mlp", kept.layer)).weight
            tensors.update(_projections(adapter, kept.layer, prefix, MLP))
        blocks.append({
            "attention": {"no_op": not kept.writes_attention, "replace_with_linear": False,
                          "n_heads_in_group": dims.heads // dims.kv_heads},
            "ffn": {"no_op": not kept.has_mlp, **ffn_entry(dims.intermediate, dims.hidden)},
        })
    config = _config(adapter, blocks, dtype)
    with atomic_directory(path, overwrite=overwrite) as tmp:
        save_file({k: v.detach().to(dtype).contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": "pt", "secateurs": name})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        shutil.copyfile(Path(__file__).with_name(f"{CONFIG_MODULE}.py"), tmp / f"{CONFIG_MODULE}.py")
        tokenizer.save_pretrained(tmp)
    return {"format": MODEL_TYPE, "architecture": ARCHITECTURE, "layers": len(layers),
            "layer_map": [k.layer for k in layers],
            "zero_attention_layers": [k.layer for k in layers if k.zero_attention],
            "ffn": blocks[0]["ffn"] if blocks else {}}


class NemotronNASExporter(Exporter):
    name = MODEL_TYPE
    engine = "vLLM"
    inside_pruned_directory = MODEL_TYPE

    def check(self, adapter: ModelAdapter, lm: LoadedModel) -> None:
        check_exportable(adapter)

    def extra_bytes(self, num_params: int, weight_bytes: int, options: object) -> float:
        return weight_bytes  # the same weights again, in the model's dtype

    def write(self, adapter: ModelAdapter, lm: LoadedModel, path: Path, options: object, name: str = "pruned",
              overwrite: bool = False) -> dict[str, Any]:
        return write_nemotron_nas(adapter, lm.tokenizer, path, name=name, overwrite=overwrite)
