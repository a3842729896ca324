"""Where a model lives (device, dtype) and how much memory the process has used at its peak."""

from __future__ import annotations

import resource

import torch
from torch import nn


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's (first) parameters: where its inputs must go."""
    return next(module.parameters()).device


def dtype_of(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def dtype_name(module: nn.Module) -> str:
    """``float32``, ``bfloat16``, ...: the dtype as results record it."""
    return str(dtype_of(module)).replace("torch.", "")


FINITE_CHECK_ELEMENTS = 2**24  # checked at a time: isfinite's temporaries stay small beside a large tensor


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf in ``tensor``, checked a part at a time (a whole-tensor check would allocate twice its size)."""
    return all(bool(torch.isfinite(part).all()) for part in tensor.detach().reshape(-1).split(FINITE_CHECK_ELEMENTS))


def peak_memory(device: torch.device | None = None) -> dict[str, float]:
    """Peak resident memory of this process, and CUDA's peak allocation when a GPU is in use (MiB)."""
    peak = {"cpu_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    on_gpu = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if on_gpu:
        peak["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak
