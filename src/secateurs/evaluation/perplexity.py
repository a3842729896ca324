"""Token perplexity (the pruning papers' protocol): PPL = exp(mean over windows of mean NLL)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import TokenWindows
from ..defaults import BATCH_SIZE
from ..distributed import Ranks
from ..models.adapter import ModelAdapter
from ..models.walk import LayerWalk
from ..offload import OffloadOptions
from ..resources import device_of, dtype_name
from ..errors import SecateursError



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
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    desc: str = "perplexity",
    ranks: Ranks = Ranks(),
) -> torch.Tensor:
    """Mean next-token NLL of every window (float32, on the CPU), batching windows.

    Several processes (``ranks``) each run their share of the batches; every rank gets all the NLLs.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    device = device_of(model)
    mine = ranks.share(windows.input_ids.split(batch_size))
    out = {}
    with tqdm(total=sum(len(b) for _, b in mine), desc=desc, unit="win", disable=not progress, leave=False) as bar:
        for index, batch in mine:
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            out[index] = next_token_nll(logits, batch).cpu()
            bar.update(len(batch))
    return torch.cat(ranks.merge(out))


@torch.no_grad()
def layerwise_window_nlls(adapter: ModelAdapter, windows: TokenWindows, batch_size: int = BATCH_SIZE,
                          progress: bool = True, offload: OffloadOptions | None = None) -> torch.Tensor:
    """The NLLs of :func:`window_nlls`, computed one decoder layer at a time over every window.

    For streamed weights (models/streaming.py): one layer's weights are in memory at a time, and the
    residual stream of all windows waits between layers where ``offload`` says (default: on disk, in
    the system's temporary directory). Bit-identical to the whole-model pass (a test).
    """
    mine = adapter.ranks.share(windows.input_ids.split(batch_size))
    offload = OffloadOptions(offload="disk") if offload is None else offload
    with LayerWalk(adapter, [ids for _, ids in mine], offload, progress=progress, desc="perplexity",
                   leave=False) as walk:
        for layer in walk:
            layer.run()
        with adapter.weights.onloaded(adapter.final_norm, adapter.lm_head):
            out = {index: next_token_nll(adapter.logits(hidden), ids).cpu()
                   for (index, ids), hidden in zip(mine, walk.hidden)}
    return torch.cat(adapter.ranks.merge(out))


def perplexity(
    model: torch.nn.Module,
    windows: TokenWindows,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    adapter: ModelAdapter | None = None,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Token perplexity of ``model`` on ``windows``, with the protocol of the number.

    With an ``adapter`` whose weights are streamed, the model runs one layer at a time (same numbers).
    """
    streamed = adapter is not None and adapter.weights.streamed
    ranks = ranks or (adapter.ranks if adapter is not None else Ranks())
    if streamed:
        nlls = layerwise_window_nlls(adapter, windows, batch_size, progress)
    else:
        nlls = window_nlls(model, windows, batch_size=batch_size, progress=progress, ranks=ranks)
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
            "device": str(adapter.device if streamed else device_of(model)),
            "batch_size": batch_size,
            **({"processes": ranks.world} if ranks.world > 1 else {}),
            **({"weights": "streamed from safetensors, one layer at a time"} if streamed else {}),
        },
    }
