"""GGUF for llama.cpp: a pruned model as llama.cpp's ``deci`` architecture (and so every tool built on it).

``deci`` gives every layer its own attention head count and feed-forward width, so a layer without its
attention (``head_count`` 0) or without its MLP (``feed_forward_length`` 0) is native. The layers written
are planned by :mod:`.layers` (whole layers left out; a first layer without attention, which llama.cpp
cannot load, gets a zero attention). One more llama.cpp defect is avoided here (read in llama.cpp's
``src/models/deci.cpp``): a layer with ``feed_forward_length`` 0 but its attention kept skips the
residual add of the attention's output, so such a layer gets a zero-weight MLP of ``ZERO_FFN_WIDTH``
instead (it adds 0).

Q and K (and their biases, as Qwen2 has) are permuted from Hugging Face's rotate-half rope layout to
llama.cpp's interleaved one, as llama.cpp's converter does for Llama. The tokenizer is copied from the
source GGUF when the model came from one (the built-in models do), else built from the Hugging Face
tokenizer (:mod:`.gguf_tokenizer`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SecateursError
from ..files import atomic_file
from ..models.adapter import Block, ModelAdapter
from .gguf_tokenizer import from_hf_tokenizer
from .layers import check_llama_like, kept_layers

ARCH = "deci"
ENGINE = "llama.cpp's deci architecture"
GGUF_FILE = "model.gguf"  # its name inside a pruned directory written with --format gguf
GGUF_TYPES = ("f32", "f16", "q8_0")
GGUF_BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}  # q8_0: 32 int8 weights and an f16 scale
ZERO_FFN_WIDTH = 32  # a multiple of every block size we quantise to (q8_0: 32)
COPIED_PREFIXES = ("tokenizer.",)  # metadata taken over from the source GGUF
ATTENTION_TENSORS = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output"}  # llama.cpp's names


def _rope_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rope halves -> llama.cpp's interleaved pairs, per head (rows of q_proj / k_proj)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensor(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float32).cpu().numpy()


def check_exportable(adapter: ModelAdapter) -> None:
    """Fail now, with what llama.cpp lacks, for a model its deci architecture cannot express."""
    check_llama_like(adapter, ENGINE, "GGUF")
    dims = adapter.dimensions()
    if dims.rope_type != "default":
        raise SecateursError(f"GGUF export: rope scaling '{dims.rope_type}' is not written yet; export --format hf")


def _layer_plan(adapter: ModelAdapter) -> list[dict[str, Any]]:
    """Per written layer: its index in the model, heads, KV heads, MLP width (0 = absent)."""
    dims = adapter.dimensions()
    plan = []
    for kept in kept_layers(adapter, "GGUF"):
        heads = dims.heads if kept.writes_attention else 0
        width = dims.intermediate if kept.mlp else (ZERO_FFN_WIDTH if heads else 0)
        plan.append({"layer": kept.layer, "attention": kept.attention, "mlp": kept.mlp, "heads": heads,
                     "kv_heads": dims.kv_heads if heads else 0, "ffn": width})
    return plan


def check_tokenizer_source(source_gguf: str | Path | None, tokenizer: Any, vocab_rows: int) -> None:
    """A GGUF export needs a tokenizer llama.cpp reads: the source GGUF's, or one built from ``tokenizer``."""
    if source_gguf is None or not Path(source_gguf).is_file():
        from_hf_tokenizer(tokenizer, vocab_rows)  # raises, naming what it cannot convert


def _source_metadata(source_gguf: Path) -> list[Any]:
    import gguf

    reader = gguf.GGUFReader(str(source_gguf))
    return [f for name, f in reader.fields.items() if name.startswith(COPIED_PREFIXES)]


def write_gguf(adapter: ModelAdapter, path: str | Path, source_gguf: Path | None, gguf_type: str = "f32",
               name: str = "pruned", overwrite: bool = False, tokenizer: Any = None) -> dict[str, Any]:
    """Write ``adapter.model`` (blocks removed or not) as a deci GGUF; returns what was written.

    The tokenizer comes from ``source_gguf`` when that file exists, else from ``tokenizer`` (Hugging Face).
    """
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise SecateursError(f"unknown --gguf-type '{gguf_type}'; choose {', '.join(GGUF_TYPES)}")
    check_exportable(adapter)
    dims, plan = adapter.dimensions(), _layer_plan(adapter)
    from_source = source_gguf is not None and Path(source_gguf).is_file()
    if not from_source and tokenizer is None:
        raise SecateursError("GGUF export needs a tokenizer: a source GGUF file or the model's Hugging Face tokenizer")
    fields = _source_metadata(Path(source_gguf)) if from_source else []
    built = None if from_source else from_hf_tokenizer(tokenizer, dims.vocab)
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}[gguf_type]
    biases = {role: any(getattr(adapter.projection(p["layer"], role), "bias", None) is not None for p in plan)
              for role in ATTENTION_TENSORS}
    with atomic_file(path, overwrite=overwrite) as tmp, contextlib.closing(gguf.GGUFWriter(str(tmp), ARCH)) as writer:
        writer.add_name(name)
        writer.add_context_length(dims.max_positions)
        writer.add_embedding_length(dims.hidden)
        writer.add_block_count(len(plan))
        writer.add_feed_forward_length([p["ffn"] for p in plan])
        writer.add_head_count([p["heads"] for p in plan])
        writer.add_head_count_kv([p["kv_heads"] for p in plan])
        writer.add_rope_freq_base(dims.rope_theta)
        writer.add_layer_norm_rms_eps(dims.norm_eps)
        writer.add_rope_dimension_count(dims.head_dim)
        writer.add_key_length(dims.head_dim)
        writer.add_value_length(dims.head_dim)
        writer.add_vocab_size(dims.vocab)
        writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type])
        if built is not None:
            built.write(writer)
        for field in fields:
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)

        def add(tensor_name: str, data: np.ndarray, quantise: bool = True) -> None:
            kind = qtype if quantise and data.ndim == 2 else gguf.GGMLQuantizationType.F32
            block = gguf.GGML_QUANT_SIZES[kind][0]
            if data.shape[-1] % block:  # rows a quantisation block does not divide are kept in f16
                kind = gguf.GGMLQuantizationType.F16
            if kind == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(tensor_name, data.astype(np.float32))
            else:
                writer.add_tensor(tensor_name, gguf.quants.quantize(data, kind), raw_dtype=kind)

        add("token_embd.weight", _tensor(adapter.embeddings.weight))
        add("output_norm.weight", _tensor(adapter.final_norm.weight), quantise=False)
        if not dims.tied:
            add("output.weight", _tensor(adapter.lm_head.weight))
        for n, p in enumerate(plan):
            i = p["layer"]
            if p["heads"]:
                norm = adapter.norm(Block("mha", i)) if p["attention"] else None
                add(f"blk.{n}.attn_norm.weight",
                    _tensor(norm.weight) if norm is not None else np.ones(dims.hidden, np.float32), quantise=False)
                for role, rows, heads in (("q", dims.heads, dims.heads), ("k", dims.kv_heads, dims.kv_heads),
                                          ("v", dims.kv_heads, None), ("o", None, None)):
                    linear = adapter.projection(i, role)
                    shape = (rows * dims.head_dim, dims.hidden) if rows else (dims.hidden, dims.heads * dims.head_dim)
                    data = _tensor(linear.weight) if linear is not None else np.zeros(shape, np.float32)
                    add(f"blk.{n}.{ATTENTION_TENSORS[role]}.weight", _rope_permute(data, heads) if heads else data)
                    if biases[role]:  # q/k/v biases (Qwen2) follow their rows' permutation
                        bias = _tensor(linear.bias) if linear is not None else np.zeros(shape[0], np.float32)
                        add(f"blk.{n}.{ATTENTION_TENSORS[role]}.bias", _rope_permute(bias, heads) if heads else bias,
                            quantise=False)
            if p["ffn"]:
                if p["mlp"]:
                    add(f"blk.{n}.ffn_norm.weight", _tensor(adapter.norm(Block("mlp", i)).weight), quantise=False)
                    for role in ("gate", "up", "down"):
                        linear = adapter.projection(i, role)
                        add(f"blk.{n}.ffn_{role}.weight", _tensor(linear.weight))
                        if linear.bias is not None:
                            add(f"blk.{n}.ffn_{role}.bias", _tensor(linear.bias), quantise=False)
                else:  # a zero MLP: adds nothing, and keeps llama.cpp's residual add of the attention output
                    add(f"blk.{n}.ffn_norm.weight", np.ones(dims.hidden, np.float32), quantise=False)
                    add(f"blk.{n}.ffn_gate.weight", np.zeros((p["ffn"], dims.hidden), np.float32))
                    add(f"blk.{n}.ffn_up.weight", np.zeros((p["ffn"], dims.hidden), np.float32))
                    add(f"blk.{n}.ffn_down.weight", np.zeros((dims.hidden, p["ffn"]), np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    return {"format": "gguf", "architecture": ARCH, "gguf_type": gguf_type, "layers": len(plan),
            "tokenizer": "copied from the source GGUF" if from_source else f"built from the Hugging Face tokenizer ({built.pre})",
            "layer_map": [p["layer"] for p in plan], "zero_attention_layers": [p["layer"] for p in plan if p["heads"] and not p["attention"]],
            "zero_mlp_layers": [p["layer"] for p in plan if p["ffn"] and not p["mlp"]]}
