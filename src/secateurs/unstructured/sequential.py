"""The sequential calibration pipeline (SparseGPT's and Wanda's protocol), and its checkpoint.

The decoder layers are handled one at a time (models/walk.py). The calibration windows' residual
stream entering the current layer is cached (one tensor per batch); statistics collectors are hooked
on the layer's linear projections while it runs on that cache; a callback prunes the layer; the layer
then runs again so the next layer sees the outputs of the already-pruned layers before it. Memory is
one layer's statistics plus the activation cache, never a second model; with streamed weights
(``--offload disk``, models/streaming.py) only the current layer's weights are in memory, and each
pruned layer is written back before the next is read. The cache lives where ``--offload`` says: on
the compute device (``none``), in CPU memory (``cpu``) or on disk (``disk``, in ``--offload-dir``),
one batch at a time coming back to the device; the results are bit-identical in all three (a test).

:class:`PrunedLayers` keeps the progress in the run's checkpoint (resume.py, stage ``sequential``):
after each layer, its pruned weights, the stream entering the next layer (each process its own
batches) and then the count of layers done. A run that finds them puts the pruned weights back,
starts the walk at the next layer from the saved stream, and gives the weights an uninterrupted run
gives (bit-identical: tests/test_interruptions.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn

from ..models.adapter import ModelAdapter
from ..models.walk import LayerWalk
from ..data import TokenWindows
from ..offload import ActivationCache
from ..resume import Checkpoint, Stage
from .collectors import Collector

if TYPE_CHECKING:
    from .methods import UnstructuredOptions


CollectorFactory = Callable[[nn.Linear], dict[str, Collector]]
LayerCallback = Callable[[int, dict[str, nn.Linear], dict[str, dict[str, Collector]]], None]

STAGE = "sequential"


class PrunedLayers:
    """The layers pruned so far, one at a time from layer 0, as kept in ``checkpoint`` (None: kept nowhere)."""

    def __init__(self, adapter: ModelAdapter, checkpoint: Checkpoint | None):
        self.adapter = adapter
        self.stage: Stage | None = checkpoint.stage(STAGE) if checkpoint is not None else None
        state = self.stage.state if self.stage is not None else None
        self.resumed = state["layers_done"] if state else 0  # layers a killed run pruned
        self.done = self.resumed  # layers pruned, by it and by this run

    @torch.no_grad()
    def restore(self) -> None:
        """Put the saved pruned weights of the layers done back into the model (streamed: written back)."""
        weights = self.adapter.weights
        for index in range(self.done):
            saved = self.stage.load_tensors(f"layer{index}")
            with weights.onloaded(self.adapter.layers[index], writable=True):
                for name, linear in self.adapter.layer_linears(index).items():
                    linear.weight.copy_(saved[name])
                weights.changed(self.adapter.layers[index])

    def stream(self, batches: int) -> Iterator[torch.Tensor]:
        """The saved stream entering the next layer, this process's ``batches`` of it, one at a time."""
        if self.done == self.adapter.num_layers:
            return  # no layer is left: the stream after the last one is not kept
        for batch in range(batches):
            yield self.stage.load_tensors(Stage.slot(f"stream.{batch}", self.done), own=True)["stream"]

    def save(self, index: int, linears: dict[str, nn.Linear], stream: ActivationCache | None = None) -> None:
        """Layer ``index`` is pruned (``linears``, onloaded) and ``stream`` holds what enters the next one."""
        self.done = index + 1
        if self.stage is None:
            return
        if self.done == self.adapter.num_layers:
            stream = None  # no layer reads it
        self.stage.save_tensors(f"layer{index}", {name: linear.weight for name, linear in linears.items()})
        for batch, hidden in enumerate(stream or ()):
            self.stage.save_tensors(Stage.slot(f"stream.{batch}", self.done), {"stream": hidden}, own=True)
        if stream is not None and self.adapter.ranks.world > 1:
            self.adapter.ranks.gather(None)  # every process has saved its share before the step is recorded
        self.stage.save_state({"layers_done": self.done})

    def details(self) -> dict[str, Any]:
        """For the report: the layers this run pruned, and where it resumed."""
        details: dict[str, Any] = {"this_run": {"layers": self.done - self.resumed}}
        if self.resumed:
            details["resumed"] = {"stage": STAGE, "after": self.resumed}
        return details


def run_sequential(
    adapter: ModelAdapter,
    windows: TokenWindows,
    options: "UnstructuredOptions",
    collectors: CollectorFactory,
    prune_layer: LayerCallback,
    progress: bool = True,
    desc: str = "layers",
    pruned: PrunedLayers | None = None,
) -> None:
    """Prune the decoder layer by layer; ``prune_layer(i, linears, stats)`` does the work per layer.

    ``options`` gives the batch size, what to propagate, and where the layer cache lives (``offload``).
    ``pruned``: where the layers done are kept; the walk continues after those a killed run did.
    """
    ranks = adapter.ranks  # each process takes its share of the batches; the statistics are summed over all
    everyone = windows.input_ids.split(options.batch_size)
    ranks.check_enough(len(everyone), "batches of calibration windows")
    batches = [ids for _, ids in ranks.share(everyone)]
    pruned = pruned or PrunedLayers(adapter, None)
    pruned.restore()
    with LayerWalk(adapter, batches, options, writable=True, progress=progress, desc=desc) as walk:
        if pruned.done:
            walk.start_at(pruned.done, pruned.stream(len(batches)))
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
            pruned.save(layer.index, linears, layer.out)
