"""Capture what flows into a model's decoder layers, and run layers again from what was captured.

Both pipelines that work layer by layer use this module: the sequential calibration of the
unstructured methods (the stream entering layer 0 and every layer's call arguments) and the block
search (the stream entering every block, and the last hidden state before the final norm).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from ..offload import ActivationCache
from .adapter import Block, ModelAdapter

FINAL = "final"  # key of the last hidden state (entering the final norm) among the captured streams

Streams = dict[Any, torch.Tensor]  # Block (or FINAL) -> the residual stream entering it


class Recorder:
    """Forward pre-hooks that keep, while they are installed, what enters the decoder's layers.

    ``streams`` receives the stream entering every block (``every_block``) or only layer 0's, plus
    FINAL; ``layer_kwargs`` (one dict per layer), if given, receives each layer's call arguments.
    """

    def __init__(self, adapter: ModelAdapter, streams: Streams, layer_kwargs: list[dict] | None = None,
                 every_block: bool = True):
        self.adapter, self.streams, self.layer_kwargs, self.every_block = adapter, streams, layer_kwargs, every_block
        self._hooks: list = []

    def __enter__(self) -> "Recorder":
        adapter = self.adapter
        for i, layer in enumerate(adapter.layers):
            self._hooks.append(layer.register_forward_pre_hook(self._layer_hook(i), with_kwargs=True))
            if self.every_block:
                self._hooks.append(adapter.entry_module(Block("mlp", i)).register_forward_pre_hook(
                    lambda module, args, i=i: self.streams.__setitem__(Block("mlp", i), args[0])))
        if self.every_block:
            self._hooks.append(adapter.final_norm.register_forward_pre_hook(
                lambda module, args: self.streams.__setitem__(FINAL, args[0])))
        return self

    def _layer_hook(self, index: int) -> Callable:
        def hook(module, args, kwargs):
            if self.every_block or index == 0:
                self.streams[Block("mha", index)] = self.adapter.layer_input(args, kwargs)
            if self.layer_kwargs is not None:
                self.layer_kwargs[index] = self.adapter.layer_call_kwargs(kwargs)
        return hook

    def __exit__(self, *exc: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


@dataclass
class LayerInputs:
    """The residual stream entering one layer, per batch of windows, and each layer's call kwargs."""

    hidden: ActivationCache  # per batch, where the run's --offload keeps it
    kwargs: list[list[dict[str, Any]]]  # per batch, per layer (masks and rotary tables differ by layer type)


@torch.no_grad()
def capture_layer_inputs(adapter: ModelAdapter, batches: list[torch.Tensor], hidden: ActivationCache) -> LayerInputs:
    """What enters layer 0 per batch (into ``hidden``) and every layer's call arguments.

    The decoder runs with its layers bypassed (models/adapter.py): only the embeddings compute, so this
    costs no layer's work and needs no layer's weights.
    """
    kwargs = []
    with adapter.weights.onloaded(adapter.embeddings):
        for ids in batches:
            calls: list[dict] = [{} for _ in range(adapter.num_layers)]

            def record(index: int, args: tuple, call: dict) -> None:
                if index == 0:
                    hidden.append(adapter.layer_input(args, call))
                calls[index] = adapter.layer_call_kwargs(call)

            with adapter.layers_bypassed(record):
                adapter.run_decoder(ids)
            kwargs.append(calls)
    return LayerInputs(hidden, kwargs)


@contextlib.contextmanager
def next_layer(inputs: LayerInputs, cache: Callable[[], ActivationCache]) -> Iterator[ActivationCache]:
    """A fresh cache for the streams that enter the next layer. When the block succeeds it replaces
    ``inputs.hidden`` (the old cache is freed); when it fails it is freed itself."""
    out = cache()
    try:
        yield out
    except BaseException:
        out.close()
        raise
    inputs.hidden.close()
    inputs.hidden = out


@torch.no_grad()
def run_layers(adapter: ModelAdapter, hidden: torch.Tensor, layer_kwargs: list[dict], start: int = 0,
               before_layer: Callable[[int], None] | None = None) -> torch.Tensor:
    """Run layers ``start..L-1`` on ``hidden`` with their captured call arguments; the last stream."""
    for index in range(start, adapter.num_layers):
        if before_layer is not None:
            before_layer(index)
        hidden = adapter.run_layer(index, hidden, layer_kwargs[index])
    return hidden


@torch.no_grad()
def run_layer_on_all(adapter: ModelAdapter, index: int, inputs: LayerInputs, out: ActivationCache) -> ActivationCache:
    """Layer ``index`` on every captured batch; ``out`` receives the streams that enter the next layer."""
    for hidden, kwargs in zip(inputs.hidden, inputs.kwargs):
        out.append(adapter.run_layer(index, hidden, kwargs[index]))
    return out
