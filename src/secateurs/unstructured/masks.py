"""Mask selection for unstructured pruning: which weights of a matrix to zero, given a score.

A *pattern* says how many weights go and among which others they compete:

- unstructured sparsity ``s`` within comparison groups: ``row`` (each output row, Wanda),
  ``matrix`` (the whole matrix), ``columns:W`` (blocks of W consecutive input columns, all rows
  together; SparseGPT uses 128), or ``blocks:N`` (the input columns cut into N equal blocks, as the
  D-Pruner code's "iterative blocking" with 32). In every group exactly ``floor(s * size)`` weights
  with the lowest scores are pruned (ties broken by position, so masks are reproducible);
- ``N:M``: in every row, of each M consecutive input weights the M - N lowest are pruned.

Scores are "importance": higher = keep. Masks are boolean, True = pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SecateursError

GROUPS = ("row", "matrix", "columns:W", "blocks:N")


@dataclass(frozen=True)
class Pattern:
    """What to prune: sparsity ``s`` in comparison groups, or N of every M kept (``nm``)."""

    sparsity: float | None = None
    group: str = "row"
    nm: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.nm is not None:
            n, m = self.nm
            if not (0 < n < m):
                raise SecateursError(f"N:M needs 0 < N < M, got {n}:{m}")
        elif self.sparsity is None or not 0 < self.sparsity < 1:
            raise SecateursError(f"sparsity must be in (0, 1), got {self.sparsity}")
        _group_width(self.group, 1)  # validates the name

    @property
    def target(self) -> float:
        """The fraction of each matrix's weights that is zeroed."""
        if self.nm is not None:
            return 1 - self.nm[0] / self.nm[1]
        return float(self.sparsity)

    def describe(self) -> str:
        if self.nm is not None:
            return f"{self.nm[0]}:{self.nm[1]}"
        return f"{100 * self.target:g}% per {self.group}"


def parse_nm(text: str) -> tuple[int, int]:
    """'2:4' -> (2, 4), with a clear error for anything else."""
    try:
        n, m = (int(part) for part in text.split(":"))
    except ValueError:
        raise SecateursError(f"--nm must look like N:M (e.g. 2:4), got '{text}'") from None
    if not 0 < n < m:
        raise SecateursError(f"--nm {text}: need 0 < N < M")
    return n, m


def _group_width(group: str, columns: int) -> int | None:
    """Input columns per comparison group, or None for row / matrix groups."""
    if group in ("row", "matrix"):
        return None
    kind, _, value = group.partition(":")
    if kind in ("columns", "blocks") and value.isdigit() and int(value) > 0:
        return int(value) if kind == "columns" else max(1, -(-columns // int(value)))
    raise SecateursError(f"unknown comparison group '{group}'; choose one of {', '.join(GROUPS)}")


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k lowest entries of each row of a 2-D tensor (stable: earlier wins ties)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores, dim=1, stable=True).indices[:, :k]
        mask.scatter_(1, order, True)
    return mask


def select_mask(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """True where a weight is pruned. ``scores``: (out, in) importance, higher = keep."""
    if scores.dim() != 2:
        raise SecateursError(f"expected a 2-D score matrix, got shape {tuple(scores.shape)}")
    scores = scores.float()
    rows, cols = scores.shape
    if pattern.nm is not None:
        n, m = pattern.nm
        if cols % m:
            raise SecateursError(f"N:M with M={m} needs the input width ({cols}) to be a multiple of {m}")
        groups = scores.reshape(rows * cols // m, m)
        return _lowest(groups, m - n).reshape(rows, cols)
    s = pattern.target
    if pattern.group == "row":
        return _lowest(scores, int(s * cols))
    if pattern.group == "matrix":
        return _lowest(scores.reshape(1, -1), int(s * scores.numel())).reshape(rows, cols)
    width = _group_width(pattern.group, cols)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for start in range(0, cols, width):
        block = scores[:, start:start + width]
        mask[:, start:start + width] = _lowest(block.reshape(1, -1), int(s * block.numel())).reshape(block.shape)
    return mask
