"""Capture what flows into a model's decoder layers, and run layers again from what was captured.

The block search records the stream entering every block and the last hidden state before the final
norm, and reruns the layers after a removed block from them; the one-shot statistics record the
stream entering a layer's MLP block. (The walk one layer at a time over cached activations is
models/walk.py.)
"""

from __future__ import annotations

from typing import Any, Callable

import torch

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


@torch.no_grad()
def run_layers(adapter: ModelAdapter, hidden: torch.Tensor, layer_kwargs: list[dict], start: int = 0,
               before_layer: Callable[[int], None] | None = None) -> torch.Tensor:
    """Run layers ``start..L-1`` on ``hidden`` with their captured call arguments; the last stream."""
    for index in range(start, adapter.num_layers):
        if before_layer is not None:
            before_layer(index)
        hidden = adapter.run_layer(index, hidden, layer_kwargs[index])
    return hidden

