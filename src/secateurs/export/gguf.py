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
tokenizer (:mod:`.gguf_tokenizer`). :class:`GGUFExporter` is the ``gguf`` format of :mod:`.registry`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SecateursError
from ..files import atomic_file
from ..models.adapter import Block, ModelAdapter
from ..models.loading import LoadedModel
from ..options import Options, option
from .exporter import Exporter
from .gguf_tokenizer import from_hf_tokenizer
from .layers import check_llama_like, kept_layers

ARCH = "deci"
ENGINE = "llama.cpp's deci architecture"
GGUF_FILE = "model.gguf"  # its name inside a pruned directory written with --format gguf
GGUF_TYPES = ("f32", "f16", "q8_0")
GGUF_BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}  # q8_0: 32 int8 weights and an f16 scale
ZERO_FFN_WIDTH = 32  # a multiple of every block size we quantise to (q8_0: 32)
COPIED_PREFIXES = ("tokenizer.",)  # metadata taken over from the source GGUF

# llama.cpp's tensor names (the format's, not the model's); a layer's are blk.{written layer}.{name}.{weight|bias}.
TOKEN_EMBEDDINGS, OUTPUT_NORM, OUTPUT = "token_embd.weight", "output_norm.weight", "output.weight"
ATTENTION_NORM, FFN_NORM = "attn_norm", "ffn_norm"
ATTENTION_TENSORS = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output"}  # by projection role
FFN_TENSORS = {"gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}


def _layer_tensor(layer: int, name: str, kind: str = "weight") -> str:
    return f"blk.{layer}.{name}.{kind}"


@dataclass
class GGUFOptions(Options):
    """GGUF export."""

    gguf_type: str = option("f32", "GGUF tensor type", choices=GGUF_TYPES)


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
        width = dims.intermediate if kept.has_mlp else (ZERO_FFN_WIDTH if heads else 0)
        plan.append({"layer": kept.layer, "attention": kept.has_attention, "mlp": kept.has_mlp, "heads": heads,
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

    GGUFOptions(gguf_type)  # an unknown tensor type fails here
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

        add(TOKEN_EMBEDDINGS, _tensor(adapter.embeddings.weight))
        add(OUTPUT_NORM, _tensor(adapter.final_norm.weight), quantise=False)
        if not dims.tied:
            add(OUTPUT, _tensor(adapter.lm_head.weight))
        for n, p in enumerate(plan):
            i = p["layer"]
            if p["heads"]:
                norm = adapter.norm(Block("mha", i)) if p["attention"] else None
                add(_layer_tensor(n, ATTENTION_NORM),
                    _tensor(norm.weight) if norm is not None else np.ones(dims.hidden, np.float32), quantise=False)
                for role, rows, heads in (("q", dims.heads, dims.heads), ("k", dims.kv_heads, dims.kv_heads),
                                          ("v", dims.kv_heads, None), ("o", None, None)):
                    linear = adapter.projection(i, role)
                    shape = (rows * dims.head_dim, dims.hidden) if rows else (dims.hidden, dims.heads * dims.head_dim)
                    data = _tensor(linear.weight) if linear is not None else np.zeros(shape, np.float32)
                    add(_layer_tensor(n, ATTENTION_TENSORS[role]), _rope_permute(data, heads) if heads else data)
                    if biases[role]:  # q/k/v biases (Qwen2) follow their rows' permutation
                        bias = _tensor(linear.bias) if linear is not None else np.zeros(shape[0], np.float32)
                        add(_layer_tensor(n, ATTENTION_TENSORS[role], "bias"), _rope_permute(bias, heads) if heads else bias,
                            quantise=False)
            if p["ffn"]:
                if p["mlp"]:
                    add(_layer_tensor(n, FFN_NORM), _tensor(adapter.norm(Block("mlp", i)).weight), quantise=False)
                    for role, tensor in FFN_TENSORS.items():
                        linear = adapter.projection(i, role)
                        add(_layer_tensor(n, tensor), _tensor(linear.weight))
                        if linear.bias is not None:
                            add(_layer_tensor(n, tensor, "bias"), _tensor(linear.bias), quantise=False)
                else:  # a zero MLP: adds nothing, and keeps llama.cpp's residual add of the attention output
                    add(_layer_tensor(n, FFN_NORM), np.ones(dims.hidden, np.float32), quantise=False)
                    add(_layer_tensor(n, FFN_TENSORS["gate"]), np.zeros((p["ffn"], dims.hidden), np.float32))
                    add(_layer_tensor(n, FFN_TENSORS["up"]), np.zeros((p["ffn"], dims.hidden), np.float32))
                    add(_layer_tensor(n, FFN_TENSORS["down"]), np.zeros((dims.hidden, p["ffn"]), np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    return {"format": "gguf", "architecture": ARCH, "gguf_type": gguf_type, "layers": len(plan),
            "tokenizer": "copied from the source GGUF" if from_source else f"built from the Hugging Face tokenizer ({built.pre})",
            "layer_map": [p["layer"] for p in plan], "zero_attention_layers": [p["layer"] for p in plan if p["heads"] and not p["attention"]],
            "zero_mlp_layers": [p["layer"] for p in plan if p["ffn"] and not p["mlp"]]}


class GGUFExporter(Exporter):
    name = "gguf"
    engine = "llama.cpp"
    writes_file = True
    inside_pruned_directory = GGUF_FILE
    options = GGUFOptions

    def check(self, adapter: ModelAdapter, lm: LoadedModel) -> None:
        check_exportable(adapter)
        check_tokenizer_source(lm.source.get("gguf"), lm.tokenizer, adapter.dimensions().vocab)

    def extra_bytes(self, num_params: int, weight_bytes: int, options: GGUFOptions) -> float:
        return num_params * GGUF_BYTES_PER_WEIGHT[options.gguf_type]

    def write(self, adapter: ModelAdapter, lm: LoadedModel, path: Path, options: GGUFOptions, name: str = "pruned",
              overwrite: bool = False) -> dict[str, Any]:
        source = lm.source.get("gguf")  # the GGUF file the model was loaded from, whose tokenizer is copied
        return write_gguf(adapter, path, Path(source) if source else None, options.gguf_type, name=name,
                          overwrite=overwrite, tokenizer=lm.tokenizer)
