"""Unstructured methods: zero individual weights of the decoder's linear projections.

| method    | score per weight                  | statistics        | default groups      |
|-----------|-----------------------------------|-------------------|---------------------|
| magnitude | abs(w)                            | none              | whole matrix        |
| wanda     | abs(w_ij) * norm(X_j)             | input norms       | per output row      |
| sparsegpt | OBS w^2 / d^2, with reconstruction| Hessian 2/n X X^T | blocks of 128 columns |
| dpruner   | dual: general OBS + domain Taylor | see dpruner.py    | 32 column blocks    |

Embeddings, norms and the LM head are never pruned. Methods with statistics run in the sequential
pipeline (sequential.py): each layer is calibrated on the outputs of the already-pruned layers.
With a checkpoint (resume.py), every method that goes layer by layer keeps each pruned layer there,
and a run killed part-way continues after the last layer it kept (sequential.PrunedLayers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..models.adapter import ModelAdapter
from ..data import TokenWindows
from ..errors import SecateursError
from ..files import Artifact
from ..defaults import BATCH_SIZE
from ..options import option
from ..plan import (OFFLOAD_CHOSEN, SEQUENTIAL_HESSIANS, SEQUENTIAL_NORMS, WEIGHTS_ONLY,
                    MemoryPolicy)
from ..resume import Checkpoint
from .masks import Pattern, parse_nm, select_mask
from .obs import DEFAULT_BLOCK_SIZE, DEFAULT_DAMPING, obs_prune
from ..offload import BudgetOption, OffloadOptions
from .sequential import PrunedLayers, run_sequential
from .collectors import Collector, Hessian, InputNorms

SPARSITY_OF = ("matrices", "all")
PROPAGATE = ("pruned", "dense")  # what the sequential pipeline feeds the next layer


@dataclass
class UnstructuredOptions(OffloadOptions, BudgetOption):
    """Options shared by the unstructured methods.

    Validated on creation; the CLI shows the first line as the title of their group.
    """

    sparsity: float | None = option(None, "fraction of weights to zero, in (0, 1)")
    nm: tuple[int, int] | None = option(None, "or N:M sparsity, e.g. 2:4 (keep N of every M)", parse=parse_nm)
    group: str | None = option(None, "comparison group: row, matrix, columns:W or blocks:N (default: the method's)")
    sparsity_of: str = option("matrices", "the sparsity counts the pruned matrices or all parameters",
                              choices=SPARSITY_OF)
    batch_size: int = option(BATCH_SIZE, "windows per forward pass", run_level=True)
    propagate: str = option("pruned", "what the next layer is calibrated on: the pruned or the dense layers' outputs",
                            choices=PROPAGATE)

    def __post_init__(self) -> None:
        if self.sparsity is None and self.nm is None:
            raise SecateursError("say how much to prune: --sparsity S or --nm N:M")
        if self.sparsity is not None and self.nm is not None:
            raise SecateursError("give either --sparsity or --nm, not both")
        if self.sparsity is not None and not 0 < self.sparsity < 1:
            raise SecateursError(f"--sparsity must be in (0, 1), got {self.sparsity}")
        if self.batch_size < 1:
            raise SecateursError(f"--batch-size must be at least 1, got {self.batch_size}")
        super().__post_init__()
        Pattern(self.sparsity, self.group or "row", self.nm)  # validates N:M and the group name

    def pattern(self, adapter: ModelAdapter, default_group: str) -> Pattern:
        """The per-matrix pattern; ``--sparsity-of all`` is converted to the matrices' share."""
        if self.nm is not None:
            return Pattern(nm=self.nm, group=self.group or default_group)
        sparsity = self.sparsity
        if self.sparsity_of == "all":
            prunable = prunable_num_params(adapter)
            sparsity = self.sparsity * adapter.total_num_params() / prunable
            if not sparsity < 1:
                raise SecateursError(f"--sparsity {self.sparsity} of all parameters needs more than all of the "
                                     f"{prunable:,} prunable weights")
        return Pattern(sparsity, self.group or default_group)


@dataclass
class OBSOptions(UnstructuredOptions):
    """SparseGPT's options (and D-Pruner's general importance, which runs SparseGPT's OBS)."""

    damping: float = option(DEFAULT_DAMPING, "OBS damping: fraction of the Hessian's mean diagonal added to it")
    block_size: int = option(DEFAULT_BLOCK_SIZE, "columns per OBS block (SparseGPT's mask is chosen per block)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.damping < 1:
            raise SecateursError(f"--damping must be in [0, 1), got {self.damping}")
        if self.block_size < 1:
            raise SecateursError(f"--block-size must be at least 1, got {self.block_size}")


def prunable_num_params(adapter: ModelAdapter) -> int:
    return sum(m.weight.numel() for m in adapter.prunable_linears().values())


@torch.no_grad()
def apply_mask(linear: nn.Linear, mask: torch.Tensor) -> None:
    linear.weight[mask.to(linear.weight.device)] = 0


@dataclass
class Calibration:
    """The data a method may use: general windows, and domain windows for D-Pruner."""

    general: TokenWindows | None = None
    domain: TokenWindows | None = None


@dataclass
class Pruned:
    """What an unstructured method reports: details for the report, files to save beside the model, notes."""

    details: dict[str, Any]
    artifacts: list[Artifact] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class UnstructuredMethod:
    """Base: a score per weight from collected statistics, then a mask per matrix."""

    name: ClassVar[str]
    options: ClassVar[type] = UnstructuredOptions
    kind: ClassVar[str] = "unstructured"
    default_calibration: ClassVar[str] = "c4"  # the papers' general calibration set
    default_group: ClassVar[str] = "row"
    uses_calibration: ClassVar[bool] = True  # general calibration windows
    uses_domain_data: ClassVar[bool] = False  # domain calibration windows (D-Pruner)
    score_name: ClassVar[str] = ""
    # one decoder layer at a time: --offload disk streams the weights; --max-memory chooses --offload
    memory: ClassVar[MemoryPolicy] = MemoryPolicy(SEQUENTIAL_NORMS, streams_weights=True, budget=OFFLOAD_CHOSEN)

    def check(self, adapter: ModelAdapter, options: UnstructuredOptions) -> None:
        """Fail now, before any calibration, if ``options`` cannot be met on this model."""
        options.pattern(adapter, self.default_group)

    def collectors(self, linear: nn.Linear) -> dict[str, Collector]:
        return {}

    def prune_linear(self, linear: nn.Linear, stats: dict[str, Collector], pattern: Pattern,
                     options: UnstructuredOptions) -> None:
        raise NotImplementedError

    def apply(self, adapter: ModelAdapter, data: Calibration, options: UnstructuredOptions,
              progress: bool = True, checkpoint: Checkpoint | None = None) -> Pruned:
        """Prune ``adapter.model`` in place; return what the report should say about the method.

        ``checkpoint``: where the completed steps are kept, and found if a killed run left some.
        """
        pattern = options.pattern(adapter, self.default_group)
        if data.general is None:
            raise SecateursError(f"{type(self).__name__} needs calibration data")

        def prune_layer(index, linears, stats):
            for name, linear in linears.items():
                self.prune_linear(linear, stats[name], pattern, options)

        pruned = PrunedLayers(adapter, checkpoint)
        run_sequential(adapter, data.general, options, self.collectors, prune_layer, progress,
                       desc=type(self).__name__.lower(), pruned=pruned)
        return Pruned({"pattern": pattern.describe(), "score": self.score_name, "protocol": "sequential",
                       "propagate": options.propagate, **pruned.details()})


class Magnitude(UnstructuredMethod):
    """Magnitude: prune the weights with the smallest absolute value (no calibration data)."""

    name = "magnitude"
    memory = MemoryPolicy(WEIGHTS_ONLY, streams_weights=True, budget=OFFLOAD_CHOSEN)
    default_group = "matrix"
    uses_calibration = False
    score_name = "|w|"

    def prune_linear(self, linear, stats, pattern, options):
        apply_mask(linear, select_mask(linear.weight.detach().abs(), pattern))

    def apply(self, adapter, data, options, progress=True, checkpoint=None):
        pattern = options.pattern(adapter, self.default_group)
        pruned = PrunedLayers(adapter, checkpoint)
        pruned.restore()
        for index in range(pruned.done, adapter.num_layers):
            with adapter.weights.onloaded(adapter.layers[index], writable=True):
                linears = adapter.layer_linears(index)
                for linear in linears.values():
                    self.prune_linear(linear, {}, pattern, options)
                adapter.weights.changed(adapter.layers[index])
                pruned.save(index, linears)
        return Pruned({"pattern": pattern.describe(), "score": self.score_name, "protocol": "no calibration",
                       **pruned.details()})


class Wanda(UnstructuredMethod):
    """Wanda: |w_ij| * ||X_j||_2, compared per output row (Sun et al., 2023)."""

    name = "wanda"
    memory = MemoryPolicy(SEQUENTIAL_NORMS, streams_weights=True, budget=OFFLOAD_CHOSEN)
    default_group = "row"
    score_name = "|w_ij| * ||X_j||_2"

    def collectors(self, linear):
        return {"input_norms": InputNorms(linear)}

    def prune_linear(self, linear, stats, pattern, options):
        norms = stats["input_norms"].norms.to(linear.weight.device)
        apply_mask(linear, select_mask(linear.weight.detach().abs().float() * norms.unsqueeze(0), pattern))


class SparseGPT(UnstructuredMethod):
    """SparseGPT: OBS saliency per block of 128 columns with weight reconstruction (Frantar & Alistarh, 2023)."""

    name = "sparsegpt"
    options = OBSOptions
    memory = MemoryPolicy(SEQUENTIAL_HESSIANS, streams_weights=True, budget=OFFLOAD_CHOSEN)
    default_group = "columns:128"
    score_name = "OBS w^2 / [chol(H^-1)]_jj^2 with reconstruction"

    def collectors(self, linear):
        return {"hessian": Hessian(linear)}

    def check(self, adapter, options):
        super().check(adapter, options)
        if options.group not in (None, f"columns:{options.block_size}"):
            raise SecateursError(f"sparsegpt chooses its mask per block of {options.block_size} columns; "
                                 f"--group {options.group} is not supported for it")

    def prune_linear(self, linear, stats, pattern, options):
        result = obs_prune(linear.weight, stats["hessian"].hessian, pattern, options.block_size, options.damping)
        with torch.no_grad():
            linear.weight.copy_(result.weight)


@torch.no_grad()
def sparsity_report(adapter: ModelAdapter) -> dict[str, Any]:
    """Achieved sparsity per matrix, over the pruned matrices, and over all parameters (counted, not assumed)."""
    per_matrix, per_layer = {}, []
    zeros = total = 0
    for index in range(adapter.num_layers):
        with adapter.weights.onloaded(adapter.layers[index]):
            layer_zeros = layer_total = 0
            for name, linear in adapter.layer_linears(index).items():
                z, n = int((linear.weight == 0).sum()), linear.weight.numel()
                per_matrix[adapter.linear_name(index, name)] = z / n
                layer_zeros, layer_total = layer_zeros + z, layer_total + n
        per_layer.append(layer_zeros / layer_total)
        zeros, total = zeros + layer_zeros, total + layer_total
    return {
        "over_pruned_matrices": zeros / total,
        "over_all_parameters": zeros / adapter.total_num_params(),
        "zeros": zeros,
        "prunable_params": total,
        "per_matrix": per_matrix,
        "per_layer": per_layer,
        "first_layer": {name: per_matrix[adapter.linear_name(0, name)] for name in adapter.layer_linears(0)},
    }
