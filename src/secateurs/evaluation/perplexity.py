"""Token perplexity (the pruning papers' protocol): PPL = exp(mean over windows of mean NLL)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import TokenWindows
from ..resources import device_of, dtype_name
from ..errors import SecateursError

DEFAULT_BATCH_SIZE = 4


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL per sequence, computed in float32. logits: (B, T, V); ids: (B, T)."""
    shifted = logits[:, :-1].float()
    targets = input_ids[:, 1:].to(shifted.device)
    nll = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape).mean(dim=1)


@torch.no_grad()
def window_nlls(
    model: torch.nn.Module,
    windows: TokenWindows,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    desc: str = "perplexity",
) -> torch.Tensor:
    """Mean next-token NLL of every window (float32, on the CPU), batching windows."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    device = device_of(model)
    ids = windows.input_ids
    out = []
    with tqdm(total=len(ids), desc=desc, unit="win", disable=not progress, leave=False) as bar:
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            out.append(next_token_nll(logits, batch).cpu())
            bar.update(len(batch))
    return torch.cat(out)


def perplexity(
    model: torch.nn.Module,
    windows: TokenWindows,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> dict[str, Any]:
    """Token perplexity of ``model`` on ``windows``, with the protocol of the number."""
    nlls = window_nlls(model, windows, batch_size=batch_size, progress=progress)
    bad = (~torch.isfinite(nlls)).nonzero().flatten().tolist()
    if bad:
        raise SecateursError(f"perplexity on {windows.protocol.get('dataset', 'the windows')}: the loss of window "
                             f"{bad[0]} (of {len(nlls)}) is {nlls[bad[0]].item()}; the model computes NaN or inf")
    mean_nll = nlls.double().mean().item()
    return {
        "metric": "token_perplexity",
        "ppl": math.exp(mean_nll),
        "mean_nll": mean_nll,
        "window_nll": [round(x, 6) for x in nlls.tolist()],
        "protocol": {
            **windows.protocol,
            "nll_dtype": "float32",
            "model_dtype": dtype_name(model),
            "device": str(device_of(model)),
            "batch_size": batch_size,
        },
    }
