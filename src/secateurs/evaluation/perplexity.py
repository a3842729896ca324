"""Token perplexity (the pruning papers' protocol): PPL = exp(mean over windows of mean NLL)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import TokenWindows
from ..distributed import Ranks
from ..models.adapter import ModelAdapter
from ..models.capture import capture_layer_inputs, next_layer, run_layer_on_all
from ..offload import ActivationCache
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
def layerwise_window_nlls(adapter: ModelAdapter, windows: TokenWindows, batch_size: int = DEFAULT_BATCH_SIZE,
                          progress: bool = True, cache_at: str = "disk", cache_dir: str | None = None) -> torch.Tensor:
    """The NLLs of :func:`window_nlls`, computed one decoder layer at a time over every window.

    For streamed weights (models/streaming.py): one layer's weights are in memory at a time, and the
    residual stream of all windows waits between layers where ``cache_at`` says (an ActivationCache).
    Bit-identical to the whole-model pass (a test).
    """
    device = adapter.device
    mine = adapter.ranks.share(windows.input_ids.split(batch_size))
    batches = [ids for _, ids in mine]
    def cache() -> ActivationCache:
        return ActivationCache(cache_at, device, cache_dir)

    inputs = capture_layer_inputs(adapter, [ids.to(device) for ids in batches], cache())
    try:
        for index in tqdm(range(adapter.num_layers), desc="perplexity", unit="layer", disable=not progress, leave=False):
            with next_layer(inputs, cache) as out, adapter.weights.onloaded(adapter.layers[index]):
                run_layer_on_all(adapter, index, inputs, out)
        with adapter.weights.onloaded(adapter.final_norm, adapter.lm_head):
            out = {index: next_token_nll(adapter.logits(hidden), ids).cpu()
                   for (index, ids), hidden in zip(mine, inputs.hidden)}
        return torch.cat(adapter.ranks.merge(out))
    finally:
        inputs.hidden.close()


def perplexity(
    model: torch.nn.Module,
    windows: TokenWindows,
    batch_size: int = DEFAULT_BATCH_SIZE,
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
