"""Structured methods: each picks residual blocks to remove as (unit x score x schedule).

| method             | unit               | score                                   | schedule |
|--------------------|--------------------|-----------------------------------------|----------|
| blockpruner        | MHA / MLP blocks   | calibration PPL of the pruned model     | greedy   |
| layer-search       | whole layers       | calibration PPL (SLEB-style, "- block") | greedy   |
| one-shot-ppl       | MHA / MLP blocks   | calibration PPL, dense model ("- search") | one shot |
| finercut           | MHA / MLP blocks   | JS divergence from the dense next-token distribution | greedy |
| shortgpt           | layers (or blocks) | Block Influence 1 - cos(x_in, x_out)    | one shot |
| relative-magnitude | layers (or blocks) | ||f(x)|| / ||x + f(x)||                 | one shot |

The methods that score variants (``resumable``) save their progress in the run's checkpoint and continue
from it (search.SavedProgress); the statistics take one pass and start over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..distributed import Ranks
from ..models.adapter import Block, ModelAdapter
from ..data import TokenWindows
from ..errors import SecateursError
from ..models.capture import FINAL, Recorder
from ..models.walk import LayerWalk
from ..offload import BudgetOption, OffloadOptions
from ..defaults import BATCH_SIZE
from ..options import Options, option
from ..plan import (BLOCK_SEARCH, CPU_RUNTIME_BYTES, GIB, LAYER_STATISTIC, PREFIX_CACHE, PREFIX_CACHE_KEPT, MemoryPolicy,
                    RunShape, choose_division, make_plan, parse_bytes)
from ..resources import device_of
from ..resume import Checkpoint
from .search import (
    Cost,
    Halving,
    combined_cost,
    SavedProgress,
    SearchStep,
    Unit,
    VariantEvaluator,
    block_units,
    forward_position,
    greedy_search,
    layer_units,
    one_shot_ranking,
    one_shot_totals,
)


BLOCK_TYPES = ("mix", "mha", "mlp")
UNITS = ("layer", "block")


@dataclass
class StructuredOptions(Options):
    """Options shared by the structured methods.

    Validated on creation; the CLI shows the first line as the title of their group.
    """

    blocks: int | None = option(None, "remove K units (blocks or layers)")
    ratio: float | None = option(None, "or stop at the first step whose parameter ratio reaches R")
    block_type: str = option("mix", "block units to consider (block units only)", choices=BLOCK_TYPES)
    batch_size: int = option(BATCH_SIZE, "windows per forward pass", run_level=True)
    from_report: str | None = option(None, "re-apply a saved search (report.json) at level --blocks, no search")

    def __post_init__(self) -> None:
        if self.blocks is None and self.ratio is None and self.from_report is None:
            raise SecateursError("say how much to prune: --blocks K or --ratio R")
        if self.blocks is not None and self.blocks < 1:
            raise SecateursError(f"--blocks must be at least 1, got {self.blocks}")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise SecateursError(f"--ratio must be in (0, 1), got {self.ratio}")
        if self.batch_size < 1:
            raise SecateursError(f"--batch-size must be at least 1, got {self.batch_size}")
        super().__post_init__()  # the mixins' checks (memory budget), then the declared choices


SEARCHES = ("exact", "halving")
DIVIDE = ("auto", "candidates", "windows")


@dataclass
class SearchOptions(StructuredOptions, BudgetOption):
    """Methods that score variants of the model on calibration data."""

    naive: bool = option(False, "reference search: a full forward per candidate")
    search: str = option("exact", "exact: the blocks of the reference search; halving: approximate and faster, "
                         "successive halving over the windows (named in the report)", choices=SEARCHES)
    halving_windows: int = option(4, "--search halving: windows every candidate is scored on in the first round")
    halving_keep: float = option(0.5, "--search halving: the fraction of candidates kept after each round")
    divide: str = option("auto", "several processes (torchrun): deal the candidates or the batches of windows over "
                         "them (auto: the cost model's choice)", choices=DIVIDE)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.halving_windows < 1:
            raise SecateursError(f"--halving-windows must be at least 1, got {self.halving_windows}")
        if not 0 < self.halving_keep < 1:
            raise SecateursError(f"--halving-keep must be in (0, 1), got {self.halving_keep}")

    @property
    def halving(self) -> Halving | None:
        return Halving(self.halving_windows, self.halving_keep) if self.search == "halving" else None


def prefix_cache_layers(adapter: ModelAdapter, windows: TokenWindows, options: SearchOptions) -> int | None:
    """How many layer inputs the prefix cache keeps per batch under ``--max-memory`` (None: all of them).

    The weights, one batch's forward and logits, and the process's runtime on the CPU come first (as
    `secateurs plan` counts them); what is left holds cached streams of every window, one per kept layer
    input plus the last one.
    """
    if options.max_memory is None or options.naive:
        return None
    shape = RunShape("blockpruner", GreedyPPL.memory, windows=len(windows), seqlen=windows.input_ids.shape[1],
                     batch_size=options.batch_size, dtype_bytes=adapter.model.dtype.itemsize)
    plan = make_plan(adapter.model.config, shape)
    per_stream = plan.parts[PREFIX_CACHE] // (2 * adapter.num_layers + 1)
    fixed = plan.peak_bytes - plan.parts[PREFIX_CACHE] + (CPU_RUNTIME_BYTES if adapter.device.type == "cpu" else 0)
    streams = (parse_bytes(options.max_memory) - fixed) // per_stream
    if streams < 2:  # layer 0's input and the last stream: the least a fast search needs
        raise SecateursError(f"--max-memory {options.max_memory} is too small: the search needs about "
                             f"{(fixed + 2 * per_stream) / GIB:.2f} GiB (the weights, one batch, two cached streams)")
    return None if streams >= 2 * adapter.num_layers + 1 else int(streams) - 1


@dataclass
class StatisticOptions(StructuredOptions, OffloadOptions):
    """Methods that score units by a statistic of the dense model's residual stream."""

    unit: str = option("layer", "unit to remove: whole layers or single blocks", choices=UNITS)



@dataclass
class Selection:
    """What a structured method decided: nested removal sets, one per step, and what it cost."""

    steps: list[SearchStep]
    cost: dict[str, int]
    score_name: str
    steps_score_calibration_nll: bool = False  # step.score is the mean NLL of that step's removal set
    recipe: dict[str, Any] = field(default_factory=dict)  # a saved search's recipe, when re-applied
    search: str = ""  # how a search compared its candidates (exact, or the approximation used); if it resumed


class StructuredMethod:
    """Base: choose units, score them, schedule the removals."""

    name: ClassVar[str]
    options: ClassVar[type] = SearchOptions
    kind: ClassVar[str] = "structured"
    default_calibration: ClassVar[str] = "alpaca"  # BlockPruner's calibration set
    uses_calibration: ClassVar[bool] = True
    uses_domain_data: ClassVar[bool] = False
    score_name: ClassVar[str] = "calibration mean NLL"
    # the searches hold a prefix cache; --max-memory keeps the part of it that fits
    memory: ClassVar[MemoryPolicy] = MemoryPolicy(BLOCK_SEARCH, budget=PREFIX_CACHE_KEPT)
    # select takes checkpoint= (the run's, resume.py): it saves its progress there and continues from it
    resumable: ClassVar[bool] = False

    def units(self, adapter: ModelAdapter, options: StructuredOptions) -> list[Unit]:
        return block_units(adapter, options.block_type)

    def check(self, adapter: ModelAdapter, options: StructuredOptions) -> None:
        """Fail now, before any calibration, if ``options`` cannot be met on this model."""
        if options.from_report is not None:
            return  # a saved search: nothing to check against the candidates
        units = self.units(adapter, options)
        if options.blocks is None:
            return  # a ratio
        if options.blocks > len(units):
            raise SecateursError(f"--blocks {options.blocks} is more than the {len(units)} candidate units")
        if options.blocks * max(len(u.blocks) for u in units) >= 2 * adapter.num_layers:
            raise SecateursError(f"--blocks {options.blocks} would remove every decoder layer: nothing would be left")

    def select(self, adapter: ModelAdapter, windows: TokenWindows, options: StructuredOptions,
               progress: bool = True) -> Selection:
        """The removal sets; a ``resumable`` method also takes ``checkpoint: Checkpoint | None``."""
        raise NotImplementedError


def windows_divided(adapter: ModelAdapter, windows: TokenWindows, options: SearchOptions) -> Ranks | None:
    """The processes a greedy search deals its batches of windows over; None: it deals the candidates
    (or runs in one process). ``--divide auto`` follows the cost model (`plan.choose_division`)."""
    ranks = adapter.ranks
    if ranks.world == 1:
        return None
    batches = math.ceil(len(windows) / options.batch_size)
    divide = options.divide
    if divide == "auto":
        divide = choose_division(adapter.num_layers, options.blocks or adapter.num_layers, ranks.world, batches)
    if divide == "candidates":
        ranks.check_enough(2 * adapter.num_layers, "candidate blocks")
        return None
    ranks.check_enough(batches, "batches of calibration windows")
    return ranks


def _search_name(options: SearchOptions, evaluator: VariantEvaluator, saved: SavedProgress | None) -> str:
    name = options.halving.describe() if options.halving else "exact" + (" (naive)" if options.naive else "")
    if evaluator.adapter.ranks.world > 1:
        what = "batches of windows" if evaluator.divided else "candidates"
        name += f"; its {what} dealt over {evaluator.adapter.ranks.world} processes"
    if saved is not None and saved.note:
        name += f"; {saved.note}"
    return name


class GreedyPPL(StructuredMethod):
    """BlockPruner: greedy iterative removal of the MHA/MLP block with the lowest calibration PPL."""

    name = "blockpruner"
    resumable = True

    def select(self, adapter, windows, options, progress=True, checkpoint: Checkpoint | None = None):
        units = self.units(adapter, options)
        evaluator = VariantEvaluator(adapter, windows, options.batch_size, fast=not options.naive,
                                     keep_layers=prefix_cache_layers(adapter, windows, options),
                                     divided_over=windows_divided(adapter, windows, options))
        saved = SavedProgress.open(checkpoint, adapter.ranks)
        steps = greedy_search(adapter, units, evaluator, options.blocks, options.ratio, progress, options.halving,
                              saved)
        return Selection(steps, combined_cost(adapter.ranks, evaluator.cost), self.score_name,
                         steps_score_calibration_nll=True, search=_search_name(options, evaluator, saved))


class LayerSearch(GreedyPPL):
    """SLEB-style greedy search over whole layers by calibration PPL (BlockPruner's '- block')."""

    name = "layer-search"

    def units(self, adapter, options):
        return layer_units(adapter)


class OneShotPPL(StructuredMethod):
    """One-shot ranking: every block scored once by calibration PPL on the dense model ('- search')."""

    name = "one-shot-ppl"

    score_name = "calibration mean NLL with the unit alone removed from the dense model"
    resumable = True

    def check(self, adapter, options):
        super().check(adapter, options)
        if options.search != "exact":
            raise SecateursError("--search halving is for the greedy searches: one-shot-ppl ranks every unit "
                                 "on every window")
        if options.divide == "windows":
            raise SecateursError("--divide windows is for the greedy searches: one-shot-ppl deals its candidates")

    def select(self, adapter, windows, options, progress=True, checkpoint: Checkpoint | None = None):
        units = self.units(adapter, options)
        evaluator = VariantEvaluator(adapter, windows, options.batch_size, fast=not options.naive,
                                     keep_layers=prefix_cache_layers(adapter, windows, options))
        evaluator.prepare()
        saved = SavedProgress.open(checkpoint, adapter.ranks)
        totals = one_shot_totals(evaluator, units, adapter.ranks, saved)
        scores = {name: total / evaluator.n_windows for name, total in totals.items()}
        steps = one_shot_ranking(adapter, units, scores, options.blocks, options.ratio)
        return Selection(steps, combined_cost(adapter.ranks, evaluator.cost), self.score_name,
                         search=_search_name(options, evaluator, saved))


def _js_loss(reference: list[torch.Tensor]):
    """Per-window mean Jensen-Shannon divergence of next-token distributions from ``reference``."""

    def loss(logits: torch.Tensor, input_ids: torch.Tensor, batch_index: int) -> torch.Tensor:
        log_p = reference[batch_index]
        log_q = torch.log_softmax(logits.float(), dim=-1)
        log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - torch.log(torch.tensor(2.0))
        kl_pm = F.kl_div(log_m, log_p, log_target=True, reduction="none").sum(-1)
        kl_qm = F.kl_div(log_m, log_q, log_target=True, reduction="none").sum(-1)
        return (0.5 * (kl_pm + kl_qm)).clamp_min(0).mean(dim=1)

    return loss


class FinerCut(StructuredMethod):
    """FinerCut-style: greedy over MHA/MLP blocks, scored by JS divergence from the dense model's outputs."""

    name = "finercut"

    score_name = "mean JS divergence from the dense model"
    resumable = True

    def select(self, adapter, windows, options, progress=True, checkpoint: Checkpoint | None = None):
        units = self.units(adapter, options)
        with torch.no_grad():
            device = device_of(adapter.model)
            reference = [
                torch.log_softmax(adapter.model(input_ids=b.to(device), use_cache=False).logits.float(), dim=-1)
                for b in windows.input_ids.split(options.batch_size)
            ]
        evaluator = VariantEvaluator(adapter, windows, options.batch_size, loss=_js_loss(reference),
                                     fast=not options.naive, keep_layers=prefix_cache_layers(adapter, windows, options),
                                     divided_over=windows_divided(adapter, windows, options))
        saved = SavedProgress.open(checkpoint, adapter.ranks)
        steps = greedy_search(adapter, units, evaluator, options.blocks, options.ratio, progress, options.halving,
                              saved)
        return Selection(steps, combined_cost(adapter.ranks, evaluator.cost), self.score_name,
                         search=_search_name(options, evaluator, saved))


def _unit_boundaries(adapter: ModelAdapter, unit: Unit) -> tuple[Any, Any]:
    """State keys of the residual stream entering and leaving a unit (block or layer)."""
    last = max(unit.blocks, key=forward_position)
    if last.kind == "mha":
        return unit.first, Block("mlp", last.layer)
    return unit.first, (Block("mha", last.layer + 1) if last.layer + 1 < adapter.num_layers else FINAL)


class OneShotStatistic(StructuredMethod):
    """Base for one-shot scores computed from the dense model's residual stream around each unit."""

    options = StatisticOptions
    memory = MemoryPolicy(LAYER_STATISTIC)  # the stream between layers waits where --offload says

    def units(self, adapter, options):
        return layer_units(adapter) if options.unit == "layer" else block_units(adapter, options.block_type)

    def statistic(self, x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
        """Per-token score (lower = less important)."""
        raise NotImplementedError

    @torch.no_grad()
    def select(self, adapter, windows, options, progress=True):
        """One pass through the dense model, a layer at a time: the streams entering a layer, its MLP block
        and the next layer are all a unit's score needs, so only one layer's streams exist at once (the
        stream between layers waits where ``--offload`` says)."""
        units = self.units(adapter, options)
        per_token: dict[str, list[torch.Tensor]] = {u.name: [] for u in units}
        mine = adapter.ranks.share(windows.input_ids.split(options.batch_size))  # several processes: a share each
        cost = Cost(cached_streams_per_batch=1)
        with LayerWalk(adapter, [ids for _, ids in mine], options, progress=progress, desc=self.name) as walk:
            for layer in walk:
                here = [u for u in units if u.first.layer == layer.index]
                for hidden, kwargs in layer.batches():
                    streams = {Block("mha", layer.index): hidden}
                    with Recorder(adapter, streams, every_block=True):  # the MLP block's entry
                        streams["out"] = adapter.run_layer(layer.index, hidden, kwargs)
                    cost.block_window_evals += 2 * len(hidden)
                    for unit in here:
                        start, end = _unit_boundaries(adapter, unit)
                        end = end if end in streams else "out"  # the next layer's input or FINAL
                        per_token[unit.name].append(
                            self.statistic(streams[start].float(), streams[end].float()).flatten())
                    layer.out.append(streams["out"])
        if adapter.ranks.world > 1:  # every batch's values, in batch order, on every rank
            shares = adapter.ranks.merge({index: {name: values[k].cpu() for name, values in per_token.items()}
                                          for k, (index, _) in enumerate(mine)})
            per_token = {name: [share[name] for share in shares] for name in per_token}
        scores = {name: torch.cat(values).double().mean().item() for name, values in per_token.items()}
        steps = one_shot_ranking(adapter, units, scores, options.blocks, options.ratio)
        return Selection(steps, combined_cost(adapter.ranks, cost), self.score_name)


class ShortGPT(OneShotStatistic):
    """ShortGPT Block Influence: remove the units whose output is most similar to their input."""

    name = "shortgpt"

    score_name = "block influence 1 - cos(x_in, x_out)"

    def statistic(self, x_in, x_out):
        return 1 - F.cosine_similarity(x_in, x_out, dim=-1)


class RelativeMagnitude(OneShotStatistic):
    """Relative Magnitude: ||f(x)|| / ||x + f(x)|| of the unit's residual branch f."""

    name = "relative-magnitude"

    score_name = "relative magnitude ||f(x)|| / ||x + f(x)||"

    def statistic(self, x_in, x_out):
        return (x_out - x_in).norm(dim=-1) / x_out.norm(dim=-1).clamp_min(1e-12)
