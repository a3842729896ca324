"""Several processes sharing one run: ``torchrun --nproc_per_node N -m secateurs prune ...``.

torch.distributed is the engine (gloo on the CPU, NCCL on GPUs); this module only says which share of
the work is this process's and combines the shares:

- batches of calibration or evaluation windows are dealt round-robin (batch ``b`` goes to rank
  ``b % world``), so every batch keeps the windows it has in one process and gives the same numbers;
- sums (input norms, Hessians) are all-reduced before each layer's decision, so every rank decides
  the same; a block search's candidates are dealt the same way and their totals gathered.

One process (``world == 1``, no torchrun) is the same code with nothing to combine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence, TypeVar

import torch

from .errors import SecateursError

T = TypeVar("T")
TIMEOUT = timedelta(minutes=30)  # a rank that died is noticed by the others within this time


@contextlib.contextmanager
def _peers_alive():
    """A collective that fails because another process died or left is one line, not a traceback."""
    try:
        yield
    except RuntimeError as exc:  # torch.distributed's errors (DistBackendError, gloo's) are RuntimeErrors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SecateursError(f"another process of this run stopped or failed, so this one cannot go on "
                             f"(torch.distributed: {first[:120]}...); nothing was written") from exc


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """The process that prints progress and writes the output and the report."""
        return self.rank == 0

    @staticmethod
    def device_of_process(device: torch.device) -> torch.device:
        """Under torchrun on GPUs, each process computes on its own GPU (``LOCAL_RANK``); else ``device``."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or device.type != "cuda":
            return device
        if device.index not in (None, 0):
            raise SecateursError(f"--device {device} with several processes: each process takes the GPU of its "
                                 "LOCAL_RANK; pass --device cuda")
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        return local

    @classmethod
    def of_launch(cls) -> "Ranks":
        """This process's rank as torchrun set it (``RANK``, ``WORLD_SIZE``), without joining the process
        group: for what is said before the group exists or after it failed (which process prints)."""
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))

    @classmethod
    def from_environment(cls, device: torch.device) -> "Ranks":
        """The ranks torchrun set up (``WORLD_SIZE`` > 1), with the process group joined; else one process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size())

    def share(self, items: Sequence[T]) -> list[tuple[int, T]]:
        """This rank's items, with their indices: item ``i`` goes to rank ``i % world``."""
        return [(i, item) for i, item in enumerate(items) if i % self.world == self.rank]

    def check_enough(self, count: int, what: str) -> None:
        if count < self.world:
            raise SecateursError(f"{self.world} processes but only {count} {what} to divide: use at most "
                                 f"{count} processes (or more windows)")

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place (every rank gets the same values)."""
        if self.world > 1:
            import torch.distributed as dist

            with _peers_alive():
                dist.all_reduce(tensor)
        return tensor

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        with _peers_alive():
            dist.all_gather_object(values, value)
        return values

    def merge(self, shares: dict[int, T]) -> list[T]:
        """Items computed by their ranks (index -> item on each), in index order on every rank."""
        merged: dict[int, T] = {}
        for part in self.gather(shares):
            merged.update(part)
        return [merged[i] for i in sorted(merged)]

    @staticmethod
    def finish() -> None:
        """Leave the process group, if this process joined one (at the end of a command)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def check_agree(self, what: str, value: Any) -> None:
        """Every rank must have the same ``value`` (its hash is compared); else one line naming a rank."""
        digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
        digests = self.gather(digest)
        differ = [rank for rank, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise SecateursError(f"rank {differ[0]} has different {what} than rank 0 (every process of a run must "
                                 "be given the same arguments and data)")
