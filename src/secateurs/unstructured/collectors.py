"""Statistics collectors: forward hooks on a linear layer that summarise its inputs.

Collectors only observe; methods decide masks from what they gathered (llm-compressor's split).
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributed import Ranks


class Collector:
    """Accumulates a statistic of a linear layer's inputs over calibration tokens."""

    def __init__(self, linear: nn.Linear):
        self.columns = linear.in_features
        self.tokens = 0

    def update(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0].detach().reshape(-1, self.columns).float()
        self.tokens += x.shape[0]
        self.add(x)

    def add(self, x: torch.Tensor) -> None:  # x: (tokens, in_features), float32
        raise NotImplementedError

    def sums(self) -> list[torch.Tensor]:
        """The accumulators: sums over tokens, so the shares of several processes add up."""
        raise NotImplementedError

    def reduce(self, ranks: Ranks) -> None:
        """Sum the statistic over the processes (each saw its share of the windows)."""
        if ranks.world == 1:
            return
        for total in self.sums():
            ranks.sum_(total)
        tokens = ranks.sum_(torch.tensor([self.tokens], dtype=torch.int64, device=self.sums()[0].device))
        self.tokens = int(tokens.item())


class InputNorms(Collector):
    """Squared L2 norm of every input feature over all tokens: ||X_j||^2 (Wanda)."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        self.squares = torch.zeros(self.columns, dtype=torch.float64, device=linear.weight.device)

    def add(self, x: torch.Tensor) -> None:
        self.squares += x.pow(2).sum(dim=0, dtype=torch.float64)

    def sums(self) -> list[torch.Tensor]:
        return [self.squares]

    @property
    def norms(self) -> torch.Tensor:
        return self.squares.sqrt().float()


class Hessian(Collector):
    """H = (2/n) X X^T over the n calibration tokens (SparseGPT / OBS), accumulated in float32 as SparseGPT."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        self.xtx = torch.zeros(self.columns, self.columns, dtype=torch.float32, device=linear.weight.device)

    def add(self, x: torch.Tensor) -> None:
        self.xtx.addmm_(x.T, x)

    def sums(self) -> list[torch.Tensor]:
        return [self.xtx]

    @property
    def hessian(self) -> torch.Tensor:
        if self.tokens == 0:
            raise ValueError("no calibration tokens reached this layer")
        return 2.0 / self.tokens * self.xtx


COLLECTORS = {"input_norms": InputNorms, "hessian": Hessian}
