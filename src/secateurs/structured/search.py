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

The prefix cache holds 2L + 1 streams per window. Under a memory budget (``keep_layers``) only the
inputs of that many layers, evenly spaced, are kept (checkpoints), and a candidate runs from the
nearest checkpoint at or before its first block: the layers in between are recomputed, on the same
tensors with the same modules, so the totals stay bit-identical (a test), at the cost of more work.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from ..distributed import Ranks
from ..models.adapter import Block, ModelAdapter
from ..models.capture import FINAL, Recorder, run_layers
from ..data import TokenWindows
from ..evaluation.perplexity import next_token_nll
from ..resources import device_of

WindowLoss = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""(logits, input_ids, batch index) -> per-window loss >= 0, float32."""



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
    def from_current(cls, adapter: ModelAdapter, final_hidden: torch.Tensor, input_ids: torch.Tensor,
                     top_k: int = BOUND_TOP_K) -> "VocabularyBound":
        logits = adapter.logits(final_hidden)[:, :-1]
        top = logits.topk(min(top_k, logits.shape[-1]), dim=-1).indices
        targets = input_ids[:, 1:]
        rows = torch.unique(torch.cat([top.flatten(), targets.flatten()]))
        return cls(adapter.head_rows(rows), torch.searchsorted(rows, targets.contiguous()))

    @torch.no_grad()
    def lower_bound(self, adapter: ModelAdapter, hidden: torch.Tensor) -> list[float]:
        z = adapter.logits(hidden, head=self.head)[:, :-1].float()
        nll = torch.logsumexp(z, dim=-1) - z.gather(-1, self.target_index.unsqueeze(-1)).squeeze(-1)
        return nll.clamp_min(0).mean(dim=1).double().tolist()


class VariantEvaluator:
    """Totals of a per-window loss for pruned variants of ``adapter.model`` on fixed windows."""

    def __init__(
        self,
        adapter: ModelAdapter,
        windows: TokenWindows,
        batch_size: int,
        loss: WindowLoss = nll_loss,
        fast: bool = True,
        keep_layers: int | None = None,
    ):
        """``keep_layers``: layer inputs kept per batch in the prefix cache (None: every block's input)."""
        self.adapter = adapter
        self.loss = loss
        self.fast = fast
        device = device_of(adapter.model)
        self.batches = [b.to(device) for b in windows.input_ids.split(batch_size)]
        self.n_windows = len(windows)
        self.cost = Cost()
        self._states: list[dict[Any, torch.Tensor]] = []  # per batch: block (or FINAL) -> entering stream
        self._layer_kwargs: list[list[dict[str, Any]]] = []  # per batch, per layer: call kwargs
        self._captured_removed: set[Block] | None = None  # the removed blocks when the states were taken
        self._bounds: list[VocabularyBound] = []  # per batch, when the loss is the NLL
        self.use_bound = fast and loss is nll_loss
        layers = adapter.num_layers
        if keep_layers is None or keep_layers >= layers:
            self.checkpoints = None  # every block's input is kept
        else:
            self.checkpoints = sorted({layers * j // max(1, keep_layers) for j in range(max(1, keep_layers))})
        self.cost.cached_streams_per_batch = (2 * layers if self.checkpoints is None else len(self.checkpoints)) + 1

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

    def _batch_loss(self, logits: torch.Tensor, ids: torch.Tensor, b: int) -> list[float]:
        self.cost.head_window_evals += len(ids)
        return self.loss(logits, ids, b).double().tolist()

    # --- naive: a full forward per variant -------------------------------------------------------
    @torch.no_grad()
    def _total_naive(self) -> float:
        total = 0.0
        for b, ids in enumerate(self.batches):
            for i in range(self.adapter.num_layers):
                self._count_layer(i, len(ids))
            logits = self.adapter.model(input_ids=ids, use_cache=False).logits
            for value in self._batch_loss(logits, ids, b):
                total += value
        return total

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
        for b, ids in enumerate(self.batches):
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

    @torch.no_grad()
    def _total_fast(self, unit: Unit, bound: float) -> float | None:
        first = unit.first
        if self.checkpoints is None:
            start, key = (first.layer if first.kind == "mha" else first.layer + 1), first
        else:  # recompute from the nearest kept layer input (the skipped blocks of the unit included)
            start = self._checkpoint(first.layer)
            key = Block("mha", start)
        total, lower, finals = 0.0, 0.0, []
        for b, ids in enumerate(self.batches):
            hidden = self._run_layers(b, start, self._states[b][key])
            if self.use_bound:
                finals.append(hidden)
                if bound < math.inf:  # a certified lower bound at a fraction of the head's cost
                    self.cost.bound_window_evals += len(ids)
                    lower += sum(self._bounds[b].lower_bound(self.adapter, hidden))
                    if lower > bound + BOUND_TOLERANCE * self.n_windows:
                        self.cost.abandoned += 1
                        return None
            else:
                for value in self._batch_loss(self.adapter.logits(hidden), ids, b):
                    total += value
                if total > bound:  # the loss is >= 0: this variant can no longer win
                    self.cost.abandoned += 1
                    return None
        for b, hidden in enumerate(finals):  # the exact loss, summed in the same order as the naive path
            for value in self._batch_loss(self.adapter.logits(hidden), self.batches[b], b):
                total += value
            if total > bound:
                self.cost.abandoned += 1
                return None
        return total

    # --- public ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Call once per step, with the step's removed blocks skipped, before scoring candidates."""
        if self.fast:
            self.capture()
        if self.use_bound:
            self._bounds = [VocabularyBound.from_current(self.adapter, s[FINAL], ids)
                            for s, ids in zip(self._states, self.batches)]
            self.cost.head_window_evals += self.n_windows

    def total(self, unit: Unit, bound: float = math.inf) -> float | None:
        """Total loss with ``unit`` also skipped; None if abandoned (its total exceeded ``bound``)."""
        with self.adapter.skipped(unit.blocks):
            result = self._total_fast(unit, bound) if self.fast else self._total_naive()
        if result is not None:
            self.cost.completed += 1
        return result


@dataclass
class SearchStep:
    """One step of a search: the unit removed and the state after it."""

    step: int
    unit: str
    removed: list[str]  # all removed blocks after this step, sorted (MHA first, by layer)
    score: float  # mean per-window loss of the chosen variant
    ratio: float
    candidates: dict[str, float | None] = field(default_factory=dict)  # mean loss; None = abandoned
    seconds: float = 0.0


def removal_ratio(adapter: ModelAdapter, blocks: Iterable[Block], dense_params: int) -> float:
    """1 - params(pruned)/params(dense), counting every parameter (the papers' ratio)."""
    return sum(adapter.block_num_params(b) for b in set(blocks)) / dense_params


def _stop_reached(step: int, ratio: float, max_steps: int | None, target_ratio: float | None) -> bool:
    return (max_steps is not None and step >= max_steps) or (target_ratio is not None and ratio >= target_ratio)


def _candidates_to_score(units: list[Unit], steps: int) -> int:
    """Candidates a greedy search over disjoint units scores in ``steps`` steps: U + (U - 1) + ..."""
    return sum(len(units) - s for s in range(min(steps, len(units))))


def greedy_search(
    adapter: ModelAdapter,
    units: list[Unit],
    evaluator: VariantEvaluator,
    max_steps: int | None = None,
    target_ratio: float | None = None,
    progress: bool = True,
) -> list[SearchStep]:
    """Iteratively remove the unit whose removal gives the lowest total; ties go to the earlier unit."""
    dense = adapter.total_num_params()
    removed: list[Block] = []
    steps: list[SearchStep] = []
    previous: dict[str, float] = {}
    total_steps = max_steps or len(units)
    # Progress counts candidates (each step scores every unit not yet removed), so the ETA is honest.
    bar = tqdm(total=_candidates_to_score(units, total_steps), desc="search", unit="cand", disable=not progress)
    try:
        while True:
            candidates = [u for u in units if not set(u.blocks) & set(removed)]
            if not candidates:
                break
            start = time.perf_counter()
            # Score the previous step's best first: a low bound early lets the rest be abandoned. Without
            # a previous score, deepest first: their suffixes are the cheapest way to a first bound.
            order = sorted(range(len(candidates)), key=lambda i: (
                previous.get(candidates[i].name, math.inf), tuple(-p for p in forward_position(candidates[i].first)), i))
            best_total, best_index = math.inf, -1
            totals: dict[str, float | None] = {}
            mine = [i for _, i in adapter.ranks.share(order)]  # several processes: each scores its share
            with adapter.skipped(removed):
                evaluator.prepare()
                for i in mine:
                    total = evaluator.total(candidates[i], bound=best_total)
                    totals[candidates[i].name] = total
                    if total is not None and (total < best_total or (total == best_total and i < best_index)):
                        best_total, best_index = total, i
                    bar.update(1)
                    if best_index >= 0:
                        bar.set_postfix_str(f"step {len(steps) + 1}/{total_steps}, best {candidates[best_index].name} "
                                            f"ppl {math.exp(best_total / evaluator.n_windows):.3f}")
            if adapter.ranks.world > 1:  # every rank sees every total and makes the same decision
                for share in adapter.ranks.gather(totals):
                    totals.update(share)
                bar.update(len(candidates) - len(mine))
                best_total, best_index = min((t, i) for i, c in enumerate(candidates)
                                             if (t := totals[c.name]) is not None)
            chosen = candidates[best_index]
            removed.extend(chosen.blocks)
            ratio = removal_ratio(adapter, removed, dense)
            steps.append(SearchStep(
                step=len(steps) + 1,
                unit=chosen.name,
                removed=[b.name for b in sorted(removed)],
                score=best_total / evaluator.n_windows,
                ratio=ratio,
                candidates={k: (None if v is None else v / evaluator.n_windows) for k, v in totals.items()},
                seconds=time.perf_counter() - start,
            ))
            previous = {k: v for k, v in totals.items() if v is not None}
            if _stop_reached(len(steps), ratio, max_steps, target_ratio):
                break
    finally:
        bar.close()
    return steps


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
