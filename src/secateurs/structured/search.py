"""Block search: score pruned variants of a model on fixed windows, greedily or in one shot.

The score of a variant is the total over windows of a per-window loss that is >= 0 (mean next-token
NLL for perplexity; mean JS divergence from the dense model for FinerCut). Two exact ways to get it:

- naive: a full forward pass of the model with the candidate's blocks skipped;
- fast: a *prefix cache*. Removing block c changes nothing before c, so per step we run the current
  model once, keep the residual stream entering every block (per batch of windows) and the arguments
  each decoder layer was called with, and a candidate runs only the layers after its first block.
  Since the loss per window is >= 0, a candidate whose running total already exceeds the best
  complete total of the step cannot win and is abandoned (exact early abandon).

Both paths apply the same modules to the same tensors in the same order, so they give bit-identical
totals and pick the same blocks; the tests check this on tiny models and on SmolLM2.

Early abandon drops a candidate once its partial sum passes the best *complete* total, so it helps most
when the windows where a candidate does worst come first: each candidate runs its batches of windows
in the order of its predicted loss, highest first (its own losses in the previous step, else the
current model's), while the totals are still summed in the canonical batch order, so the scores stay
bit-identical to the naive path.

Successive halving (``Halving``, opt-in and approximate) scores every candidate on the first few
windows, keeps the best fraction, doubles the windows and repeats, then finishes the survivors exactly.
A candidate that would have won can be eliminated early, so its choices may differ from the exact search.

The prefix cache holds 2L + 1 streams per window. Under a memory budget (``keep_layers``) only the
inputs of that many layers, evenly spaced, are kept (checkpoints), and a candidate runs from the
nearest checkpoint at or before its first block: the layers in between are recomputed, on the same
tensors with the same modules, so the totals stay bit-identical (a test), at the cost of more work.

A run with an output saves a search's progress in its checkpoint (resume.py, stage "search"): after each
greedy step the steps so far and the candidates' losses the next step orders its work by (``Scored``,
whose floats JSON keeps exactly); for a one-shot ranking, the totals of the units scored so far. The same
command run again re-applies the removed blocks and continues from there (``SavedProgress``), choosing
what an uninterrupted run chooses; its cost counts only its own work.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from ..distributed import Ranks
from ..models.adapter import Block, ModelAdapter
from ..models.capture import FINAL, Recorder, run_layers
from ..data import TokenWindows
from ..evaluation.perplexity import next_token_nll
from ..resources import device_of
from ..resume import Checkpoint, Stage

WindowLoss = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""(logits, input_ids, batch index) -> per-window loss >= 0, float32."""

SEARCH_STAGE = "search"  # the checkpoint's stage that holds a search's progress


def nll_loss(logits: torch.Tensor, input_ids: torch.Tensor, batch_index: int) -> torch.Tensor:
    return next_token_nll(logits, input_ids)


@dataclass(frozen=True)
class Unit:
    """A candidate for removal: one block, or a whole layer (both of its blocks)."""

    name: str
    blocks: tuple[Block, ...]

    @property
    def first(self) -> Block:
        return min(self.blocks, key=forward_position)


def forward_position(block: Block) -> tuple[int, int]:
    """Where a block runs in the forward pass: layer by layer, attention before MLP."""
    return block.layer, 0 if block.kind == "mha" else 1


def block_units(adapter: ModelAdapter, block_type: str = "mix") -> list[Unit]:
    """Single blocks in the canonical order (MHA 0..L-1, then MLP 0..L-1)."""
    return [Unit(b.name, (b,)) for b in adapter.blocks(block_type)]  # type: ignore[arg-type]


def layer_units(adapter: ModelAdapter) -> list[Unit]:
    """Whole decoder layers, in order."""
    return [Unit(f"layer.{i}", (Block("mha", i), Block("mlp", i))) for i in range(adapter.num_layers)]


@dataclass
class Cost:
    """Work done, in block evaluations over one window each (and LM-head evaluations)."""

    block_window_evals: int = 0
    head_window_evals: int = 0
    bound_window_evals: int = 0  # cheap lower bounds on a window's loss (see VocabularyBound)
    abandoned: int = 0
    completed: int = 0
    eliminated: int = 0  # successive halving: candidates dropped on part of the windows (approximate)
    cached_streams_per_batch: int = 0  # the prefix cache's size: 2L + 1, or fewer under a memory budget

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def combined_cost(ranks: Ranks, cost: Cost) -> dict[str, Any]:
    """The work of all processes summed, and each one's (with several processes: the work divides)."""
    shares = ranks.gather(cost.as_dict())
    if len(shares) == 1:
        return shares[0]
    total = {key: sum(s[key] for s in shares) for key in shares[0]}
    total["cached_streams_per_batch"] = cost.cached_streams_per_batch
    return {**total, "per_process": shares}


BOUND_TOP_K = 128  # tokens per position the current model ranks highest, kept in the bound's vocabulary
BOUND_TOLERANCE = 1e-3  # per window, in nats: far above float32 rounding of a mean NLL (~1e-6)
REORDERED_SUM_SLACK = 1e-9  # relative: a sum in another order than the canonical one may differ by rounding


@dataclass
class VocabularyBound:
    """A certified lower bound on a window's mean next-token NLL from part of the vocabulary.

    For any token subset S that holds the target, logsumexp over S <= logsumexp over the whole
    vocabulary, so max(0, lse(z_S) - z_target) <= the token's NLL. S = every target plus the tokens the
    current model (this step's, before a candidate is removed) ranks in its top ``BOUND_TOP_K`` at some
    position: a variant one block away still puts nearly all its mass there, so on SmolLM2 the bound
    is within about 1.5% of the NLL at under a tenth of the LM head's cost. A candidate whose bounds
    already exceed the step's best total (plus a rounding tolerance) cannot win and is dropped without
    running the full head; every other candidate gets its exact loss.
    """

    head: torch.nn.Linear  # the LM head restricted to S
    target_index: torch.Tensor  # (batch, seqlen - 1): position of each target in S

    @classmethod
    @torch.no_grad()
    def from_current(cls, adapter: ModelAdapter, logits: torch.Tensor, input_ids: torch.Tensor,
                     top_k: int = BOUND_TOP_K) -> "VocabularyBound":
        """``logits``: the current model's on ``input_ids``."""
        top = logits[:, :-1].topk(min(top_k, logits.shape[-1]), dim=-1).indices
        targets = input_ids[:, 1:]
        rows = torch.unique(torch.cat([top.flatten(), targets.flatten()]))
        return cls(adapter.head_rows(rows), torch.searchsorted(rows, targets.contiguous()))

    @torch.no_grad()
    def lower_bound(self, adapter: ModelAdapter, hidden: torch.Tensor) -> list[float]:
        z = adapter.logits(hidden, head=self.head)[:, :-1].float()
        nll = torch.logsumexp(z, dim=-1) - z.gather(-1, self.target_index.unsqueeze(-1)).squeeze(-1)
        return nll.clamp_min(0).mean(dim=1).double().tolist()


def canonical_sum(exact: dict[int, list[float]]) -> float:
    """Per-window losses summed batch by batch, window by window: the naive path's order, so equal
    losses give bit-identical totals however they were computed."""
    total = 0.0
    for b in sorted(exact):
        for value in exact[b]:
            total += value
    return total


@dataclass
class Scored:
    """A candidate's losses on the batches of windows it ran."""

    exact: dict[int, list[float]] = field(default_factory=dict)  # batch -> loss of each of its windows
    lower: dict[int, float] = field(default_factory=dict)  # batch -> lower bound of its summed loss
    abandoned: bool = False  # it cannot win: stopped before its exact total
    total: float | None = None  # over every window, in the canonical order; None unless all ran

    def per_batch(self) -> dict[int, float]:
        """Each batch's summed loss, exact or (where only that is known) its lower bound."""
        return {**self.lower, **{b: sum(v) for b, v in self.exact.items()}}

    def to_json(self) -> dict[str, Any]:
        """JSON keys are text: the batches become strings (``from_json`` turns them back)."""
        return {"exact": {str(b): v for b, v in self.exact.items()},
                "lower": {str(b): v for b, v in self.lower.items()}, "abandoned": self.abandoned, "total": self.total}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Scored":
        return cls({int(b): v for b, v in data["exact"].items()}, {int(b): v for b, v in data["lower"].items()},
                   data["abandoned"], data["total"])


class VariantEvaluator:
    """Losses of a per-window loss for pruned variants of ``adapter.model`` on fixed windows."""

    def __init__(
        self,
        adapter: ModelAdapter,
        windows: TokenWindows,
        batch_size: int,
        loss: WindowLoss = nll_loss,
        fast: bool = True,
        keep_layers: int | None = None,
        order_windows: bool = True,
        divided_over: Ranks | None = None,
    ):
        """``keep_layers``: layer inputs kept per batch in the prefix cache (None: every block's input).
        ``order_windows``: run each candidate's likely worst batches first (off: in the canonical order;
        the scores are the same either way, only the work differs).
        ``divided_over``: the batches of windows are dealt over these processes; this one captures and
        scores only its own (``mine``)."""
        self.adapter = adapter
        self.loss = loss
        self.fast = fast
        self.order_windows = order_windows
        device = device_of(adapter.model)
        self.batches = [b.to(device) for b in windows.input_ids.split(batch_size)]
        self.n_windows = len(windows)
        self.divided = divided_over is not None and divided_over.world > 1
        self._sum_over_processes = lambda value: math.fsum((divided_over or Ranks()).gather(value))
        self.mine = [b for b, _ in (divided_over or Ranks()).share(range(len(self.batches)))]
        self.cost = Cost()
        self._states: list[dict[Any, torch.Tensor]] = []  # per batch: block (or FINAL) -> entering stream
        self._layer_kwargs: list[list[dict[str, Any]]] = []  # per batch, per layer: call kwargs
        self._captured_removed: set[Block] | None = None  # the removed blocks when the states were taken
        self._bounds: dict[int, VocabularyBound] = {}  # per batch, when the loss is the NLL
        self._current: dict[int, float] = {}  # per batch: the current model's summed loss (predicts the order)
        self.use_bound = fast and loss is nll_loss
        layers = adapter.num_layers
        if keep_layers is None or keep_layers >= layers:
            self.checkpoints = None  # every block's input is kept
        else:
            self.checkpoints = sorted({layers * j // max(1, keep_layers) for j in range(max(1, keep_layers))})
        self.cost.cached_streams_per_batch = (2 * layers if self.checkpoints is None else len(self.checkpoints)) + 1

    @property
    def n_batches(self) -> int:
        return len(self.batches)

    def windows_in(self, batches: Iterable[int]) -> int:
        return sum(len(self.batches[b]) for b in batches)

    def _checkpoint(self, layer: int) -> int:
        """The nearest kept layer input at or before ``layer``."""
        return layer if self.checkpoints is None else max(c for c in self.checkpoints if c <= layer)

    def _drop_uncached(self, states: dict[Any, torch.Tensor]) -> None:
        if self.checkpoints is not None:
            kept = {Block("mha", c) for c in self.checkpoints} | {FINAL}
            for key in [k for k in states if k not in kept]:
                del states[key]

    # --- bookkeeping -----------------------------------------------------------------------------
    def _count_layer(self, index: int, windows: int) -> None:
        alive = sum(not self.adapter.is_removed(Block(k, index)) for k in ("mha", "mlp"))
        self.cost.block_window_evals += alive * windows

    def _batch_loss(self, logits: torch.Tensor, b: int) -> list[float]:
        self.cost.head_window_evals += len(self.batches[b])
        return self.loss(logits, self.batches[b], b).double().tolist()

    # --- fast: the prefix cache --------------------------------------------------------------------
    @torch.no_grad()
    def capture(self) -> list[dict[Any, torch.Tensor]]:
        """Run the current model; keep the stream entering every block and each layer's call.

        States taken before are reused up to the first block removed since (they cannot have changed),
        so after the first step only the layers from that block on are run again.
        """
        adapter = self.adapter
        removed = set(adapter.removed_blocks())
        reuse = self._captured_removed is not None and self._captured_removed <= removed
        start = min((b.layer for b in removed - self._captured_removed), default=adapter.num_layers) if reuse else 0
        if not reuse:
            self._states = [{} for _ in self.batches]
            self._layer_kwargs = [[{} for _ in range(adapter.num_layers)] for _ in self.batches]
        for b in self.mine:
            ids = self.batches[b]
            if reuse and start == adapter.num_layers:
                break  # nothing changed since the last capture
            states = self._states[b]
            with Recorder(adapter, states, None if reuse else self._layer_kwargs[b]):
                if reuse:
                    begin = self._checkpoint(start)
                    states[FINAL] = self._run_layers(b, begin, states[Block("mha", begin)])
                else:
                    for i in range(adapter.num_layers):
                        self._count_layer(i, len(ids))
                    adapter.run_decoder(ids)
            self._drop_uncached(states)
        self._captured_removed = removed
        return self._states

    def _run_layers(self, b: int, start: int, hidden: torch.Tensor) -> torch.Tensor:
        return run_layers(self.adapter, hidden, self._layer_kwargs[b], start,
                          before_layer=lambda i: self._count_layer(i, len(hidden)))

    def _finals(self, unit: Unit, batches: Iterable[int]) -> Iterable[tuple[int, torch.Tensor]]:
        """The last hidden state of each batch with ``unit`` skipped, from the prefix cache."""
        first = unit.first
        if self.checkpoints is None:
            start, key = (first.layer if first.kind == "mha" else first.layer + 1), first
        else:  # recompute from the nearest kept layer input (the skipped blocks of the unit included)
            start = self._checkpoint(first.layer)
            key = Block("mha", start)
        for b in batches:
            yield b, self._run_layers(b, start, self._states[b][key])

    @torch.no_grad()
    def _score_naive(self, batches: list[int], known: dict[int, list[float]]) -> Scored:
        """The reference: a full forward per batch, never abandoned."""
        scored = Scored(exact=dict(known))
        for b in batches:
            for i in range(self.adapter.num_layers):
                self._count_layer(i, len(self.batches[b]))
            scored.exact[b] = self._batch_loss(self.adapter.model(input_ids=self.batches[b], use_cache=False).logits, b)
        if len(scored.exact) == self.n_batches:
            scored.total = canonical_sum(scored.exact)
        return scored

    @torch.no_grad()
    def _score(self, unit: Unit, batches: list[int], bound: float, known: dict[int, list[float]]) -> Scored:
        if set(known) & set(batches):
            raise ValueError("a batch is both known and to be scored: its loss would count twice")
        if not self.fast:
            return self._score_naive(batches, known)
        scored = Scored(exact=dict(known))
        # Abandon as soon as what is known of the total (exact losses, or lower bounds) exceeds the bound.
        # These partial sums are not in the canonical order: the margins cover their rounding.
        known_sum = sum(map(sum, known.values()))
        partial, margin, tolerance = known_sum, REORDERED_SUM_SLACK * abs(bound), BOUND_TOLERANCE * self.n_windows
        bounded = self.use_bound and bound < math.inf
        finals: dict[int, torch.Tensor] = {}
        for b, hidden in self._finals(unit, batches):
            if self.use_bound:  # the exact loss waits: first a certified lower bound at a fraction of the cost
                finals[b] = hidden
                if bounded:
                    self.cost.bound_window_evals += len(hidden)
                    scored.lower[b] = sum(self._bounds[b].lower_bound(self.adapter, hidden))
                    partial += scored.lower[b]
                    if partial > bound + tolerance:
                        scored.abandoned = True
                        break
            else:
                scored.exact[b] = self._batch_loss(self.adapter.logits(hidden), b)
                partial += sum(scored.exact[b])
                if partial > bound + margin:
                    scored.abandoned = True
                    break
        if bounded and self.divided:  # the processes' bounds summed (every process calls this once per candidate)
            partial = known_sum + self._sum_over_processes(partial - known_sum)
            scored.abandoned = partial > bound + tolerance
        if scored.abandoned:
            return scored
        exact_sum, outstanding = known_sum, sum(scored.lower.values())
        for b in sorted(finals):  # every bound passed: now the exact losses, stopping if they already exceed it
            scored.exact[b] = self._batch_loss(self.adapter.logits(finals[b]), b)
            exact_sum += sum(scored.exact[b])
            outstanding -= scored.lower.pop(b, 0.0)
            if bounded and exact_sum + outstanding > bound + tolerance:
                scored.abandoned = True
                return scored
        if len(scored.exact) == self.n_batches:
            scored.total = canonical_sum(scored.exact)
            scored.abandoned = scored.total > bound  # the loss is >= 0: it could not have won
        return scored

    # --- public ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Call once per step, with the step's removed blocks skipped, before scoring candidates."""
        if not self.fast:
            return
        self.capture()
        self._bounds, self._current = {}, {}
        for b in self.mine:
            logits = self.adapter.logits(self._states[b][FINAL])
            self._current[b] = sum(self._batch_loss(logits, b))
            if self.use_bound:
                self._bounds[b] = VocabularyBound.from_current(self.adapter, logits, self.batches[b])

    def order(self, batches: Iterable[int], predicted: dict[int, float] | None = None) -> list[int]:
        """``batches`` with the highest predicted loss first (ties, and the naive path: canonical order).

        ``predicted``: the candidate's own summed loss per batch (the previous step's); the current
        model's loss stands in where it is missing.
        """
        batches = sorted(batches)
        if not (self.fast and self.order_windows and self._current):
            return batches
        guess = {b: (predicted or {}).get(b, self._current.get(b, 0.0)) for b in batches}
        return sorted(batches, key=lambda b: (-guess[b], b))

    def score(self, unit: Unit, batches: Iterable[int] | None = None, bound: float = math.inf,
              known: dict[int, list[float]] | None = None, predicted: dict[int, float] | None = None) -> Scored:
        """``unit`` also skipped: its losses on ``batches`` (default: all) and, once every batch is known,
        its total. Abandoned as soon as the total is certain to exceed ``bound``.

        ``known``: per-window losses of other batches, already computed (successive halving).
        """
        batches = self.order(range(self.n_batches) if batches is None else batches, predicted)
        with self.adapter.skipped(unit.blocks):
            scored = self._score(unit, batches, bound, known or {})
        if not self.divided:  # else counted once the processes' parts are merged
            self.cost.abandoned += scored.abandoned
            self.cost.completed += scored.total is not None and not scored.abandoned
        return scored

    def total(self, unit: Unit, bound: float = math.inf) -> float | None:
        """Total loss with ``unit`` also skipped; None if abandoned (its total exceeded ``bound``)."""
        scored = self.score(unit, bound=bound)
        return None if scored.abandoned else scored.total


@dataclass(frozen=True)
class Halving:
    """Successive halving over windows (approximate): score every candidate on ``first_windows``
    windows, keep the best ``keep`` fraction, double the windows, repeat; finish the survivors exactly."""

    first_windows: int = 4
    keep: float = 0.5

    def __post_init__(self) -> None:
        if self.first_windows < 1 or not 0 < self.keep < 1:
            raise ValueError(f"successive halving needs first_windows >= 1 and 0 < keep < 1, got {self}")

    def describe(self) -> str:
        return (f"successive halving (approximate): every candidate scored on the first {self.first_windows} "
                f"windows (whole batches), the best {self.keep:g} kept, windows doubled each round, the survivors "
                "finished exactly")


@dataclass
class SearchStep:
    """One step of a search: the unit removed and the state after it."""

    step: int
    unit: str
    removed: list[str]  # all removed blocks after this step, sorted (MHA first, by layer)
    score: float  # mean per-window loss of the chosen variant
    ratio: float
    candidates: dict[str, float | None] = field(default_factory=dict)  # mean loss; None = abandoned / eliminated
    seconds: float = 0.0
    screened: dict[str, float] = field(default_factory=dict)  # halving: eliminated -> mean loss on its windows
    block_window_evals: int = 0  # the work of this step (this process's)


@dataclass
class SavedProgress:
    """A search's stage of the run's checkpoint (resume.py) and the state it held when the search began,
    as rank 0 read it: every process resumes from the same step.

    A greedy search's state: ``steps`` (SearchStep) and ``scored`` (the last step's candidates, by name:
    their ``Scored``); a one-shot ranking's: ``totals`` (unit name -> total loss of the units scored).
    """

    stage: Stage
    state: dict[str, Any] | None

    @classmethod
    def open(cls, checkpoint: Checkpoint | None, ranks: Ranks) -> "SavedProgress | None":
        """None for a run without a checkpoint (no output): nothing is saved."""
        if checkpoint is None:
            return None
        stage = checkpoint.stage(SEARCH_STAGE)
        return cls(stage, ranks.gather(stage.state if ranks.main else None)[0])

    @property
    def note(self) -> str:
        """What the report says of a search that continued a killed one ("" for one that did not)."""
        if not self.state:
            return ""
        if "steps" in self.state:
            return f"resumed after step {len(self.state['steps'])}"
        return f"resumed with {len(self.state['totals'])} units already scored"

    def steps(self) -> list[SearchStep]:
        return [SearchStep(**s) for s in self.state["steps"]] if self.state else []

    def scored(self) -> dict[str, Scored]:
        return {name: Scored.from_json(s) for name, s in self.state["scored"].items()} if self.state else {}

    def totals(self) -> dict[str, float]:
        return dict(self.state["totals"]) if self.state else {}

    def save(self, state: dict[str, Any]) -> None:
        self.stage.save_state(state)


def removal_ratio(adapter: ModelAdapter, blocks: Iterable[Block], dense_params: int) -> float:
    """1 - params(pruned)/params(dense), counting every parameter (the papers' ratio)."""
    return sum(adapter.block_num_params(b) for b in set(blocks)) / dense_params


def _stop_reached(step: int, ratio: float, max_steps: int | None, target_ratio: float | None) -> bool:
    return (max_steps is not None and step >= max_steps) or (target_ratio is not None and ratio >= target_ratio)


def _candidates_to_score(units: list[Unit], steps: int) -> int:
    """Candidates a greedy search over disjoint units scores in ``steps`` steps: U + (U - 1) + ..."""
    return sum(len(units) - s for s in range(min(steps, len(units))))


def _gathered(ranks: Ranks, mine: dict[int, Scored]) -> dict[int, Scored]:
    """Every rank's scored candidates, on every rank."""
    merged: dict[int, Scored] = {}
    for share in ranks.gather(mine):
        merged.update(share)
    return merged


class _Step:
    """One greedy step's scoring: the candidates in order, the best so far, progress.

    With several processes either the candidates are dealt (each process scores its share on every
    window, with its own early-abandon bound) or the batches of windows are (every process scores every
    candidate on its own batches; after each candidate the losses are gathered, so all share one bound).
    Either way every process ends with every candidate's result.
    """

    def __init__(self, evaluator: VariantEvaluator, candidates: list[Unit], ranks: Ranks, on_scored: Callable):
        self.evaluator, self.candidates, self.ranks, self.on_scored = evaluator, candidates, ranks, on_scored
        self.scored: dict[int, Scored] = {}
        self.screened: dict[int, float] = {}

    def _mine(self, indices: list[int]) -> list[int]:
        """The candidates this process scores: all of them when the windows are divided."""
        return list(indices) if self.evaluator.divided else [i for _, i in self.ranks.share(indices)]

    def _own(self, batches: Iterable[int]) -> list[int]:
        mine = set(self.evaluator.mine)
        return [b for b in batches if b in mine]

    def _merge(self, parts: list[Scored], bound: float) -> Scored:
        """One candidate's losses from the processes that each scored some of its batches."""
        merged = Scored(abandoned=any(p.abandoned for p in parts))
        for part in parts:
            merged.exact.update(part.exact)
            merged.lower.update(part.lower)
        if not merged.abandoned and len(merged.exact) == self.evaluator.n_batches:
            merged.total = canonical_sum(merged.exact)
            merged.abandoned = merged.total > bound
        if self.ranks.main:  # counted once
            self.evaluator.cost.completed += merged.total is not None and not merged.abandoned
            self.evaluator.cost.abandoned += merged.abandoned
        return merged

    def _score(self, i: int, batches: Iterable[int], bound: float, known: dict[int, list[float]] | None,
               previous: dict[str, Scored]) -> Scored:
        before = previous.get(self.candidates[i].name)
        predicted = before.per_batch() if before else None
        if not self.evaluator.divided:
            return self.evaluator.score(self.candidates[i], batches, bound, known, predicted)
        part = self.evaluator.score(self.candidates[i], self._own(batches), bound, known, predicted)
        return self._merge(self.ranks.gather(part), bound)

    def finish(self, order: list[int], batches: range, known: dict[int, dict[int, list[float]]],
               previous: dict[str, Scored]) -> None:
        """Score the candidates ``order`` exactly on ``batches``, in that order: the best so far bounds
        the rest. Every process then holds every candidate's result."""
        best_total, best_index = math.inf, -1
        mine: dict[int, Scored] = {}
        for i in self._mine(order):
            scored = mine[i] = self._score(i, batches, best_total, known.get(i), previous)
            if not scored.abandoned and (scored.total < best_total or (scored.total == best_total and i < best_index)):
                best_total, best_index = scored.total, i
            self.on_scored(1, self.candidates[best_index].name if best_index >= 0 else None, best_total)
        self.scored.update(mine if self.evaluator.divided else _gathered(self.ranks, mine))
        self.on_scored(len(order) - len(mine), None, None)

    def halve(self, halving: Halving, order: list[int]) -> tuple[list[int], range, dict[int, dict[int, list[float]]]]:
        """Successive halving: the survivors (best first), the batches they still need, their known losses."""
        evaluator, n = self.evaluator, self.evaluator.n_batches
        size = len(evaluator.batches[0])
        alive, known = list(order), {i: {} for i in order}
        done, upto = 0, min(n, math.ceil(halving.first_windows / size))
        while len(alive) > 1 and upto < n:
            mine = {i: self._score(i, range(done, upto), math.inf, known[i], {}) for i in self._mine(alive)}
            for i, scored in (mine if evaluator.divided else _gathered(self.ranks, mine)).items():
                known[i] = scored.exact
            partial = {i: canonical_sum(known[i]) for i in alive}
            ranked = sorted(alive, key=lambda i: (partial[i], i))
            keep = max(1, math.ceil(len(alive) * halving.keep))
            windows = evaluator.windows_in(range(upto))
            for i in ranked[keep:]:
                self.screened[i] = partial[i] / windows
            evaluator.cost.eliminated += len(ranked) - keep if self.ranks.main else 0
            self.on_scored(len(ranked) - keep, None, None)
            alive, done, upto = ranked[:keep], upto, min(n, 2 * upto)
        return alive, range(done, n), known


def greedy_search(
    adapter: ModelAdapter,
    units: list[Unit],
    evaluator: VariantEvaluator,
    max_steps: int | None = None,
    target_ratio: float | None = None,
    progress: bool = True,
    halving: Halving | None = None,
    saved: SavedProgress | None = None,
) -> list[SearchStep]:
    """Iteratively remove the unit whose removal gives the lowest total; ties go to the earlier unit.

    Exact unless ``halving`` is given (then the survivors of successive halving compete exactly).
    ``saved``: where each completed step is saved, and the steps a killed run completed, to continue from.
    """
    dense = adapter.total_num_params()
    steps = saved.steps() if saved else []
    previous = saved.scored() if saved else {}  # the last step's candidates: they order the next step's work
    by_name = {u.name: u for u in units}
    removed = [b for s in steps for b in by_name[s.unit].blocks]
    total_steps = max_steps or len(units)
    # Progress counts candidates (each step scores every unit not yet removed), so the ETA is honest.
    bar = tqdm(total=_candidates_to_score(units, total_steps), initial=_candidates_to_score(units, len(steps)),
               desc="search", unit="cand", disable=not progress)

    def on_scored(count: int, best: str | None, best_total: float | None) -> None:
        bar.update(count)
        if best is not None:
            bar.set_postfix_str(f"step {len(steps) + 1}/{total_steps}, best {best} "
                                f"ppl {math.exp(best_total / evaluator.n_windows):.3f}")

    try:
        while not (steps and _stop_reached(len(steps), steps[-1].ratio, max_steps, target_ratio)):
            candidates = [u for u in units if not set(u.blocks) & set(removed)]
            if not candidates:
                break
            start, work = time.perf_counter(), evaluator.cost.block_window_evals
            # Score the previous step's best first: a low bound early lets the rest be abandoned. Without
            # a previous score, deepest first: their suffixes are the cheapest way to a first bound.
            order = sorted(range(len(candidates)), key=lambda i: (
                (s.total if (s := previous.get(candidates[i].name)) and s.total is not None else math.inf),
                tuple(-p for p in forward_position(candidates[i].first)), i))
            step = _Step(evaluator, candidates, adapter.ranks, on_scored)
            with adapter.skipped(removed):
                evaluator.prepare()
                if halving is None:
                    step.finish(order, range(evaluator.n_batches), {}, previous)
                else:
                    survivors, rest, known = step.halve(halving, order)
                    step.finish(survivors, rest, known, previous)
            finished = {i: s.total for i, s in step.scored.items() if not s.abandoned and s.total is not None}
            best_total, best_index = min((t, i) for i, t in finished.items())
            chosen = candidates[best_index]
            removed.extend(chosen.blocks)
            ratio = removal_ratio(adapter, removed, dense)
            steps.append(SearchStep(
                step=len(steps) + 1,
                unit=chosen.name,
                removed=[b.name for b in sorted(removed)],
                score=best_total / evaluator.n_windows,
                ratio=ratio,
                candidates={c.name: (None if (t := finished.get(i)) is None else t / evaluator.n_windows)
                            for i, c in enumerate(candidates)},
                seconds=time.perf_counter() - start,
                screened={candidates[i].name: v for i, v in step.screened.items()},
                block_window_evals=evaluator.cost.block_window_evals - work,
            ))
            previous = {candidates[i].name: s for i, s in step.scored.items()}
            if saved is not None:
                saved.save({"steps": [asdict(s) for s in steps],
                            "scored": {name: s.to_json() for name, s in previous.items()}})
    finally:
        bar.close()
    return steps


def one_shot_totals(evaluator: VariantEvaluator, units: list[Unit], ranks: Ranks,
                    saved: SavedProgress | None = None) -> dict[str, float]:
    """Each unit's total loss with it alone removed from the current model (call ``evaluator.prepare``
    first). The units are dealt over the processes a round at a time (unit i to rank i % world); after
    each round every process holds the totals so far and ``saved`` records them, so that a resumed run
    scores only the units left."""
    totals = saved.totals() if saved else {}
    left = [u for u in units if u.name not in totals]
    for start in range(0, len(left), ranks.world):
        round_ = left[start:start + ranks.world]
        mine = {i: evaluator.total(unit) for i, unit in ranks.share(round_)}
        totals.update(zip((u.name for u in round_), ranks.merge(mine)))
        if saved is not None:
            saved.save({"totals": totals})
    return {u.name: totals[u.name] for u in units}


def one_shot_ranking(
    adapter: ModelAdapter,
    units: list[Unit],
    scores: dict[str, float],
    max_steps: int | None = None,
    target_ratio: float | None = None,
) -> list[SearchStep]:
    """Remove units in order of ascending score (computed once, on the dense model); ties -> earlier."""
    dense = adapter.total_num_params()
    ranked = sorted(range(len(units)), key=lambda i: (scores[units[i].name], i))
    removed: list[Block] = []
    steps = []
    for i in ranked:
        removed.extend(units[i].blocks)
        ratio = removal_ratio(adapter, removed, dense)
        steps.append(SearchStep(len(steps) + 1, units[i].name, [b.name for b in sorted(removed)],
                                scores[units[i].name], ratio))
        if _stop_reached(len(steps), ratio, max_steps, target_ratio):
            break
    return steps
