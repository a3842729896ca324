"""Tensors kept on disk (or in CPU memory) instead of on the compute device, read back one at a time.

:class:`DiskTensors` writes each tensor's raw bytes to its own file in a private temporary directory.
``get`` reads one back into a fresh tensor that the caller frees when done with it, so the store costs
memory only for the tensor in use (the operating system may keep the files in its page cache, which it
gives up under pressure and which does not count toward the process's resident set). The directory is
removed when the store is closed (it is a context manager), also after an error.

:class:`ActivationCache` holds what the layer-by-layer pipelines cache per calibration batch (the
residual stream entering a layer) on the device, in CPU memory or in a :class:`DiskTensors` store.

:class:`OffloadOptions` and :class:`BudgetOption` are the options the methods that walk the decoder share.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import SecateursError
from .files import check_free_space, work_directory
from .options import Options, option

# numpy has no bfloat16: such tensors are stored as their raw 16 bits and viewed back
_STORAGE = {torch.float32: (np.float32, None), torch.float16: (np.float16, None),
            torch.bfloat16: (np.int16, torch.int16), torch.int64: (np.int64, None)}


class DiskTensors:
    """A temporary, private store of named tensors on disk (``directory``: where; default the system's)."""

    def __init__(self, directory: str | Path | None = None, kind: str = "offload"):
        self.root = work_directory(kind, directory)  # a killed run's are removed by the next one
        self._index: dict[str, tuple[str, torch.dtype, tuple[int, ...]]] = {}

    def __enter__(self) -> "DiskTensors":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._index.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def put(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``tensor`` (detached, moved to the CPU) under ``name``."""
        if tensor.dtype not in _STORAGE:
            raise SecateursError(f"offload: tensors of dtype {tensor.dtype} are not supported")
        file = f"{len(self._index)}.bin"
        data = tensor.detach().to("cpu").contiguous()
        view = _STORAGE[tensor.dtype][1]
        array = (data.view(view) if view is not None else data).numpy()
        check_free_space(self.root / file, array.nbytes)
        try:
            array.tofile(self.root / file)
        except OSError as exc:
            raise SecateursError(f"offload to {self.root} failed: {exc.strerror or exc}") from exc
        self._index[name] = (file, tensor.dtype, tuple(tensor.shape))

    def get(self, name: str) -> torch.Tensor:
        """A fresh copy of the tensor stored as ``name``, read from its file."""
        file, dtype, shape = self._index[name]
        np_dtype, view = _STORAGE[dtype]
        try:
            array = np.fromfile(self.root / file, dtype=np_dtype)
        except OSError as exc:
            raise SecateursError(f"offload: cannot read {self.root / file} back: {exc.strerror or exc}") from exc
        tensor = torch.from_numpy(array).view(shape)
        return tensor.view(dtype) if view is not None else tensor

    def nbytes(self) -> int:
        return sum((self.root / file).stat().st_size for file, _, _ in self._index.values())


OFFLOAD = ("none", "cpu", "disk")  # where an activation cache lives: the compute device, CPU memory, disk


def parse_bytes(text: str) -> int:
    """``80GB``, ``80GiB``, ``512MB``, ``1.5TB`` or a plain number of bytes."""
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("kmgtib")
    unit = cleaned[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1
    if value < 0 or unit not in units:
        raise SecateursError(f"cannot read the memory size '{text}' (use e.g. 80GB, 24GiB, 512MB)")
    return int(value * units[unit])


@dataclass
class OffloadOptions(Options):
    """Offload: where what waits between decoder layers lives.

    A mixin of the options classes whose methods walk the decoder one layer at a time.
    """

    offload: str = option("none", "where the stream between layers waits: none (the compute device), cpu (memory) "
                                  "or disk; with disk, magnitude, wanda and sparsegpt also read the weights from "
                                  "their safetensors files one layer at a time", choices=OFFLOAD)
    offload_dir: str | None = option(None, "directory for what is offloaded to disk (default: the system's "
                                           "temporary directory); removed afterwards")


@dataclass
class BudgetOption(Options):
    """Memory budget: what the run may hold, instead of choosing the offload by hand.

    A mixin of the options classes whose methods can trade memory for disk or for recomputation.
    """

    max_memory: str | None = option(None, "a memory budget, e.g. 8GiB: the sequential methods choose --offload "
                                          "from `secateurs plan`'s prediction; the block search keeps the part of its "
                                          "prefix cache that fits and recomputes the rest (same choices)")

    def __post_init__(self) -> None:
        if self.max_memory is not None:
            parse_bytes(self.max_memory)  # a budget that does not parse fails before anything loads
        super().__post_init__()


class ActivationCache:
    """One tensor per calibration batch (the residual stream at one point of the decoder), kept where
    ``offload`` says: on the compute device (``none``), in CPU memory (``cpu``) or on disk (``disk``).
    Reading a batch gives it back on ``device``. Close it (or use it as a context manager) to free it.
    """

    def __init__(self, offload: str, device: torch.device, directory: str | Path | None = None):
        if offload not in OFFLOAD:
            raise SecateursError(f"--offload must be one of {', '.join(OFFLOAD)}, got '{offload}'")
        self.offload, self.device = offload, device
        self._memory: list[torch.Tensor] = []
        self._disk = DiskTensors(directory, kind="activations") if offload == "disk" else None
        self._count = 0

    def __enter__(self) -> "ActivationCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def append(self, tensor: torch.Tensor) -> None:
        if self._disk is not None:
            self._disk.put(str(self._count), tensor)
        else:
            self._memory.append(tensor.to("cpu") if self.offload == "cpu" else tensor)
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self._count:
            raise IndexError(index)
        stored = self._disk.get(str(index)) if self._disk is not None else self._memory[index]
        return stored.to(self.device)

    def __iter__(self):
        return (self[i] for i in range(self._count))

    def close(self) -> None:
        self._memory.clear()
        if self._disk is not None:
            self._disk.close()

    def clear(self) -> None:
        """Drop every batch; the cache can be filled again."""
        self.close()
        self._count = 0
        if self._disk is not None:
            self._disk = DiskTensors(self._disk.root.parent, kind="activations")
