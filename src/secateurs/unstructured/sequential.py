"""The sequential calibration pipeline (SparseGPT's and Wanda's protocol).

The decoder layers are handled one at a time. The calibration windows' residual stream entering the
current layer is cached (one tensor per batch); statistics collectors are hooked on the layer's linear
projections while it runs on that cache; a callback prunes the layer; the layer then runs again so the
next layer sees the outputs of the already-pruned layers before it. Memory is one layer's statistics
plus the activation cache, never a second model.
"""

from __future__ import annotations

from typing import Callable

from torch import nn
from tqdm.auto import tqdm

from ..models.adapter import ModelAdapter
from ..models.capture import capture_layer_inputs, run_layer_on_all
from ..resources import device_of
from ..data import TokenWindows
from .collectors import Collector

PROPAGATE = ("pruned", "dense")

CollectorFactory = Callable[[nn.Linear], dict[str, Collector]]
LayerCallback = Callable[[int, dict[str, nn.Linear], dict[str, dict[str, Collector]]], None]


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
    device = device_of(adapter.model)
    inputs = capture_layer_inputs(adapter, [ids.to(device) for ids in windows.input_ids.split(batch_size)])
    for index in tqdm(range(adapter.num_layers), desc=desc, unit="layer", disable=not progress):
        linears = adapter.layer_linears(index)
        stats = {name: collectors(linear) for name, linear in linears.items()}
        hooks = [linear.register_forward_hook(c.update) for name, linear in linears.items() for c in stats[name].values()]
        try:
            dense_out = run_layer_on_all(adapter, index, inputs)
        finally:
            for hook in hooks:
                hook.remove()
        prune_layer(index, linears, stats)
        inputs.hidden = dense_out if propagate == "dense" else run_layer_on_all(adapter, index, inputs)
        del stats
