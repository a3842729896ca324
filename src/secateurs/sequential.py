"""The sequential calibration pipeline (SparseGPT's and Wanda's protocol).

The decoder layers are handled one at a time. The calibration windows' residual stream entering the
current layer is cached (one tensor per batch); statistics collectors are hooked on the layer's linear
projections while it runs on that cache; a callback prunes the layer; the layer then runs again so the
next layer sees the outputs of the already-pruned layers before it. Memory is one layer's statistics
plus the activation cache, never a second model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .adapter import ModelAdapter
from .data import TokenWindows
from .stats import Collector

PROPAGATE = ("pruned", "dense")

CollectorFactory = Callable[[nn.Linear], dict[str, Collector]]
LayerCallback = Callable[[int, dict[str, nn.Linear], dict[str, dict[str, Collector]]], None]


@dataclass
class LayerInputs:
    """The residual stream entering one layer, per batch of windows, and each layer's call kwargs."""

    hidden: list[torch.Tensor]
    kwargs: list[list[dict[str, Any]]]  # per batch, per layer (masks and rotary tables differ by layer type)


def linear_modules(layer: nn.Module) -> dict[str, nn.Linear]:
    """The prunable projections of a decoder layer (q, k, v, o, gate, up, down), by relative name."""
    return {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def capture_inputs(adapter: ModelAdapter, windows: TokenWindows, batch_size: int) -> LayerInputs:
    """Run the model once per batch and keep what enters layer 0 plus every layer's call kwargs."""
    device = next(adapter.model.parameters()).device
    hidden, kwargs = [], []
    for ids in windows.input_ids.split(batch_size):
        seen: dict[int, dict[str, Any]] = {}
        first: list[torch.Tensor] = []

        def pre(module, args, kw, i):
            if i == 0:
                first.append(args[0] if args else kw["hidden_states"])
            seen[i] = {k: v for k, v in kw.items() if k != "hidden_states"}

        hooks = [layer.register_forward_pre_hook(lambda m, a, k, i=i: pre(m, a, k, i), with_kwargs=True)
                 for i, layer in enumerate(adapter.layers)]
        try:
            adapter.decoder(input_ids=ids.to(device), use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()
        hidden.append(first[0])
        kwargs.append([seen[i] for i in range(adapter.num_layers)])
    return LayerInputs(hidden, kwargs)


@torch.no_grad()
def _run_layer(layer: nn.Module, index: int, inputs: LayerInputs) -> list[torch.Tensor]:
    outputs = []
    for hidden, kwargs in zip(inputs.hidden, inputs.kwargs):
        out = layer(hidden, **kwargs[index])
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


def run_sequential(
    adapter: ModelAdapter,
    windows: TokenWindows,
    batch_size: int,
    collectors: CollectorFactory,
    prune_layer: LayerCallback,
    propagate: str = "pruned",
    progress: bool = True,
    desc: str = "layers",
) -> None:
    """Prune the decoder layer by layer; ``prune_layer(i, linears, stats)`` does the work per layer."""
    if propagate not in PROPAGATE:
        raise ValueError(f"propagate must be one of {PROPAGATE}, got {propagate!r}")
    inputs = capture_inputs(adapter, windows, batch_size)
    for index in tqdm(range(adapter.num_layers), desc=desc, unit="layer", disable=not progress):
        layer = adapter.layers[index]
        linears = linear_modules(layer)
        stats = {name: collectors(linear) for name, linear in linears.items()}
        hooks = [linear.register_forward_hook(c.update) for name, linear in linears.items() for c in stats[name].values()]
        try:
            dense_out = _run_layer(layer, index, inputs)
        finally:
            for hook in hooks:
                hook.remove()
        prune_layer(index, linears, stats)
        inputs.hidden = dense_out if propagate == "dense" else _run_layer(layer, index, inputs)
        del stats
