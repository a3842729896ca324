"""A GGUF file dequantised into a safetensors checkpoint one tensor at a time (the GGUF cache's writer).

transformers loads a GGUF file by dequantising every tensor into memory and then building the model
from them: well over the float32 weights at once. Here the file is memory-mapped, each tensor is
dequantised on its own with the ``gguf`` package, named and laid out by transformers' own GGUF code
(its name map and tensor processors, so it holds the values transformers would load), and written
into safetensors shards of about ``SHARD_BYTES``: memory holds one shard, or one tensor larger than
that. The config and tokenizer come from transformers' reading of the file's metadata. The directory
holds what ``save_pretrained`` writes for the model transformers loads: the same tensors, bit for bit,
a tied weight once.

:func:`plan_dequantisation` returns None for a file it cannot write this way (an architecture whose
tensor processor merges tensors, as the mixture-of-experts ones do, or that transformers loads by its
newer GGUF path; a weight the file lacks or holds twice): the caller then lets transformers load it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .streaming import INDEX_FILE, SINGLE_FILE

SHARD_BYTES = 64 * 2**20  # about this much float32 per shard file; a larger tensor gets a shard of its own
CHUNK_BYTES = 16 * 2**20  # rows of one tensor dequantised at once
FLOAT32_BYTES = 4


@dataclass
class DequantisationPlan:
    """What a GGUF file becomes: the config, tokenizer and each weight's tensor in the file."""

    model: Any  # built from the file's config on the meta device: class, config, generation config, shapes
    tokenizer: Any
    processor: Any  # transformers' tensor processor for the file's architecture (reverse permutations)
    tensors: list[tuple[str, Any]]  # (Hugging Face weight name, the file's ReaderTensor), in the file's order

    def write(self, directory: Path, shard_bytes: int = SHARD_BYTES) -> None:
        """Write the checkpoint into ``directory``, one shard of dequantised tensors in memory at a time."""
        from safetensors.torch import save_file

        self._write_config(directory)
        self.tokenizer.save_pretrained(directory)
        shards = _shards(self.tensors, shard_bytes)
        weight_map = {}
        for number, shard in enumerate(shards, start=1):
            file = SINGLE_FILE if len(shards) == 1 else f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            save_file({name: self._dequantised(name, tensor) for name, tensor in shard}, str(directory / file),
                      metadata={"format": "pt"})
            weight_map.update({name: file for name, _ in shard})
        if len(shards) > 1:  # transformers' index of a sharded checkpoint
            total = sum(FLOAT32_BYTES * int(tensor.n_elements) for _, tensor in self.tensors)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    def _write_config(self, directory: Path) -> None:
        """config.json and generation_config.json as ``save_pretrained`` writes them for a float32 model."""
        config = self.model.config
        config.dtype = "float32"
        config.architectures = [type(self.model).__name__]
        config.save_pretrained(directory)
        if self.model.can_generate():
            self.model.generation_config.save_pretrained(directory)

    def _dequantised(self, name: str, tensor: Any) -> torch.Tensor:
        """One weight as float32, as transformers' GGUF loading computes it."""
        weights = self.processor.process(weights=_dequantise(tensor), name=tensor.name).weights
        expected = tuple(self.model.get_parameter_or_buffer(name).shape)
        if tuple(weights.shape) != expected:
            raise ValueError(f"tensor {tensor.name} has shape {list(weights.shape)}, but the config makes "
                             f"{name} {list(expected)}")
        return torch.from_numpy(np.ascontiguousarray(weights)).to(torch.float32)


def _dequantise(tensor: Any) -> np.ndarray:
    """A GGUF tensor's values in an array of their own, dequantised a few rows at a time: memory holds the
    result and one chunk's temporaries, not the two copies that dequantising it whole makes."""
    from gguf import dequantize

    data = tensor.data  # memory-mapped; a quantised tensor's rows are whole blocks
    if data.ndim < 2:
        return np.array(dequantize(data, tensor.tensor_type))  # a copy: an F32 tensor comes back as a view of the file
    first = dequantize(data[:1], tensor.tensor_type)
    values = np.empty((len(data), *first.shape[1:]), dtype=first.dtype)
    rows = max(1, CHUNK_BYTES // first.nbytes)
    for start in range(0, len(data), rows):
        values[start:start + rows] = dequantize(data[start:start + rows], tensor.tensor_type)
    return values


def _shards(tensors: list[tuple[str, Any]], shard_bytes: int) -> list[list[tuple[str, Any]]]:
    """``tensors`` in order, cut into runs of at most ``shard_bytes`` of float32 (a larger one alone)."""
    shards: list[list[tuple[str, Any]]] = [[]]
    size = 0
    for name, tensor in tensors:
        nbytes = FLOAT32_BYTES * int(tensor.n_elements)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, tensor))
        size += nbytes
    return shards


def _newer_gguf_path(architecture: str) -> bool:
    """Whether transformers loads ``architecture`` by its newer GGUF path (its own conversions), not the
    name map and tensor processors read here."""
    try:
        from transformers.integrations.gguf.utils import is_gguf_arch_supported
    except ImportError:  # a release without that path
        return False
    return is_gguf_arch_supported(architecture)


def plan_dequantisation(gguf: Path) -> DequantisationPlan | None:
    """How to write ``gguf`` one tensor at a time, from its metadata; None where it cannot be (see above).

    Reads no tensor data. A file transformers cannot read raises what transformers raises.
    """
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        LlamaTensorProcessor,
        Gemma2TensorProcessor,
        TensorProcessor,
        get_gguf_hf_weights_map,
        load_gguf_checkpoint,
        read_field,
    )
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    reader = GGUFReader(str(gguf))
    architecture = read_field(reader, "general.architecture")[0]
    file_tensors = list(reader.tensors)
    del reader  # its parsed metadata (the whole vocabulary) is not needed again
    processor_class = TENSOR_PROCESSORS.get(architecture, TensorProcessor)
    if processor_class not in (TensorProcessor, LlamaTensorProcessor, Gemma2TensorProcessor) \
            or _newer_gguf_path(architecture):
        return None  # its processor may merge tensors, or transformers converts it otherwise
    processor = processor_class(config=load_gguf_checkpoint(str(gguf))["config"])
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    saved = set(remove_tied_weights_from_state_dict(model.state_dict(), model))  # what save_pretrained writes
    hf_names = get_gguf_hf_weights_map(model, processor)  # GGUF tensor name -> Hugging Face name
    tensors = [(hf_names[t.name], t) for t in file_tensors if hf_names.get(t.name) in saved]
    if sorted(name for name, _ in tensors) != sorted(saved):
        return None  # a weight the file lacks (transformers would initialise it) or holds twice
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
    return DequantisationPlan(model, tokenizer, processor, tensors)
