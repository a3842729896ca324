"""Walk the decoder one layer at a time over cached activations.

The pipelines that work layer by layer share this walk (after llm-compressor's sequential pipeline):
the sequential calibration of the unstructured methods, the one-shot statistics of the structured
methods, and perplexity with streamed weights. The embeddings run once to capture, per batch of
windows, the residual stream entering layer 0 and every layer's call arguments; then each layer in
turn has its weights onloaded (models/streaming.py), the caller gets the layer's cached inputs and a
fresh cache to fill with its outputs, and these outputs become the next layer's inputs. After the
last layer, ``LayerWalk.hidden`` holds the stream entering the final norm. A walk resumed from a
checkpoint starts at a later layer from a saved stream (``LayerWalk.start_at``).

The caches live where ``--offload`` says (an ActivationCache: the compute device, CPU memory or
disk); each is closed as soon as it is no longer needed, and all of them when the walk ends, also on
an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from ..offload import ActivationCache, OffloadOptions
from .adapter import ModelAdapter


@dataclass
class LayerStep:
    """One layer's turn in the walk: its cached inputs, and the cache the caller fills with its outputs."""

    adapter: ModelAdapter
    index: int
    inputs: ActivationCache  # the stream entering the layer, per batch
    kwargs: list[dict[str, Any]]  # the layer's call arguments, per batch
    out: ActivationCache  # the stream entering the next layer, per batch, in the same order

    def batches(self) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        """Each batch's input stream with the layer's call arguments for it."""
        return zip(self.inputs, self.kwargs)

    @torch.no_grad()
    def run(self) -> None:
        """The layer on every cached batch; its outputs go to ``out``."""
        for hidden, kwargs in self.batches():
            self.out.append(self.adapter.run_layer(self.index, hidden, kwargs))


class LayerWalk:
    """The decoder over ``batches`` of token ids, one layer at a time; enter it, then iterate::

        with LayerWalk(adapter, batches, options) as walk:
            for layer in walk:
                layer.run()
            last = walk.hidden

    ``offload`` says where the caches live (its ``offload`` and ``offload_dir``); ``writable``: the
    layers' onloaded weights may be changed in place; ``progress``, ``desc``, ``leave``: the progress bar.
    """

    def __init__(self, adapter: ModelAdapter, batches: list[torch.Tensor], offload: OffloadOptions, *,
                 writable: bool = False, progress: bool = True, desc: str = "layers", leave: bool = True):
        self.adapter, self.batches, self.offload, self.writable = adapter, batches, offload, writable
        self.progress, self.desc, self.leave = progress, desc, leave
        self.hidden: ActivationCache | None = None  # the stream entering the current layer, per batch
        self.start = 0  # the first layer the walk visits
        self._kwargs: list[list[dict[str, Any]]] = []  # per batch, per layer
        self._steps: Iterator[LayerStep] | None = None

    def _cache(self) -> ActivationCache:
        return ActivationCache(self.offload.offload, self.adapter.device, self.offload.offload_dir)

    def __enter__(self) -> "LayerWalk":
        self.hidden = self._cache()
        try:
            self._kwargs = _capture_layer_inputs(self.adapter, [ids.to(self.adapter.device) for ids in self.batches],
                                                 self.hidden)
        except BaseException:
            self.hidden.close()
            raise
        return self

    def start_at(self, index: int, inputs: Iterable[torch.Tensor]) -> None:
        """Begin at layer ``index``, with ``inputs`` (one tensor per batch) as the stream entering it, instead
        of the captured one entering layer 0 (a walk resumed from a checkpoint). Call it before iterating."""
        self.hidden.close()
        self.hidden = self._cache()
        for tensor in inputs:
            self.hidden.append(tensor)
        self.start = index

    def __iter__(self) -> Iterator[LayerStep]:
        self._steps = self._walk()
        return self._steps

    def _walk(self) -> Iterator[LayerStep]:
        adapter = self.adapter
        for index in tqdm(range(self.start, adapter.num_layers), desc=self.desc, unit="layer", initial=self.start,
                          total=adapter.num_layers, disable=not self.progress, leave=self.leave):
            out = self._cache()
            try:
                with adapter.weights.onloaded(adapter.layers[index], writable=self.writable):
                    yield LayerStep(adapter, index, self.hidden, [calls[index] for calls in self._kwargs], out)
            except BaseException:  # also the GeneratorExit of a walk left mid-way
                out.close()
                raise
            self.hidden.close()
            self.hidden = out

    def __exit__(self, *exc: Any) -> None:
        if self._steps is not None:
            self._steps.close()  # a step left by an error frees its output cache and its weights
        self.hidden.close()


@torch.no_grad()
def _capture_layer_inputs(adapter: ModelAdapter, batches: list[torch.Tensor],
                          hidden: ActivationCache) -> list[list[dict[str, Any]]]:
    """What enters layer 0 per batch (into ``hidden``); every layer's call arguments per batch.

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
    return kwargs
