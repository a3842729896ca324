"""The sequential calibration pipeline (SparseGPT's and Wanda's protocol).

The decoder layers are handled one at a time (models/walk.py). The calibration windows' residual
stream entering the current layer is cached (one tensor per batch); statistics collectors are hooked
on the layer's linear projections while it runs on that cache; a callback prunes the layer; the layer
then runs again so the next layer sees the outputs of the already-pruned layers before it. Memory is
one layer's statistics plus the activation cache, never a second model; with streamed weights
(``--offload disk``, models/streaming.py) only the current layer's weights are in memory, and each
pruned layer is written back before the next is read. The cache lives where ``--offload`` says: on
the compute device (``none``), in CPU memory (``cpu``) or on disk (``disk``, in ``--offload-dir``),
one batch at a time coming back to the device; the results are bit-identical in all three (a test).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from torch import nn

from ..models.adapter import ModelAdapter
from ..models.walk import LayerWalk
from ..data import TokenWindows
from .collectors import Collector

if TYPE_CHECKING:
    from .methods import UnstructuredOptions


CollectorFactory = Callable[[nn.Linear], dict[str, Collector]]
LayerCallback = Callable[[int, dict[str, nn.Linear], dict[str, dict[str, Collector]]], None]


def run_sequential(
    adapter: ModelAdapter,
    windows: TokenWindows,
    options: "UnstructuredOptions",
    collectors: CollectorFactory,
    prune_layer: LayerCallback,
    progress: bool = True,
    desc: str = "layers",
) -> None:
    """Prune the decoder layer by layer; ``prune_layer(i, linears, stats)`` does the work per layer.

    ``options`` gives the batch size, what to propagate, and where the layer cache lives (``offload``).
    """
    ranks = adapter.ranks  # each process takes its share of the batches; the statistics are summed over all
    everyone = windows.input_ids.split(options.batch_size)
    ranks.check_enough(len(everyone), "batches of calibration windows")
    batches = [ids for _, ids in ranks.share(everyone)]
    with LayerWalk(adapter, batches, options, writable=True, progress=progress, desc=desc) as walk:
        for layer in walk:
            linears = adapter.layer_linears(layer.index)
            stats = {name: collectors(linear) for name, linear in linears.items()}
            hooks = [linear.register_forward_hook(c.update) for name, linear in linears.items()
                     for c in stats[name].values()]
            try:
                layer.run()
            finally:
                for hook in hooks:
                    hook.remove()
            for collected in stats.values():
                for collector in collected.values():
                    collector.reduce(ranks)
            prune_layer(layer.index, linears, stats)
            del stats
            adapter.weights.changed(adapter.layers[layer.index])
            if options.propagate == "pruned":  # the next layer sees this layer's pruned outputs
                layer.out.clear()
                layer.run()
