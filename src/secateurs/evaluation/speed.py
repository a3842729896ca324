"""Speed of a model: prefill and decode tokens/s and peak memory, with the settings stated."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, ContextManager

import torch

from ..compat import cache_keyword, output_cache
from ..resources import device_of, dtype_name, peak_memory

DEFAULT_PROMPT_TOKENS = 128
DEFAULT_DECODE_TOKENS = 32
DEFAULT_REPEATS = 3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _run_once(model: torch.nn.Module, ids: torch.Tensor, decode_tokens: int) -> tuple[float, float]:
    """Seconds for the prefill of ``ids`` and for greedy-decoding ``decode_tokens`` with a KV cache."""
    device, keyword = ids.device, cache_keyword(model)
    _sync(device)
    start = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    _sync(device)
    t_prefill = time.perf_counter() - start
    cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(decode_tokens):
        out = model(input_ids=token, use_cache=True, **{keyword: cache})
        cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
    _sync(device)
    return t_prefill, time.perf_counter() - start


@torch.no_grad()
def compare_speed(model: torch.nn.Module, variants: dict[str, Callable[[], ContextManager]], batch_size: int = 1,
                  prompt_tokens: int = DEFAULT_PROMPT_TOKENS, decode_tokens: int = DEFAULT_DECODE_TOKENS,
                  repeats: int = DEFAULT_REPEATS, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Speed of variants of ``model`` (each entered by its context, e.g. with blocks skipped), interleaved.

    Each round runs every variant once, so a machine that slows down or speeds up during the
    measurement affects all of them alike; the first round warms up, then the median of ``repeats``.
    Unstructured zeros give no speed-up here: dense kernels multiply zeros like any other number.
    """
    device = device_of(model)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, prompt_tokens),
                        generator=torch.Generator().manual_seed(seed)).to(device)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for attempt in range(repeats + 1):
        for name, enter in variants.items():
            with enter():
                measured = _run_once(model, ids, decode_tokens)
            if attempt:  # the first round warms up
                times[name].append(measured)
    results = {}
    for name, enter in variants.items():
        with enter():
            params = sum(p.numel() for p in model.parameters())
        result = {
            "batch_size": batch_size, "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens, "repeats": repeats,
            "prefill_tokens_per_s": _median([batch_size * prompt_tokens / t for t, _ in times[name]]),
            "decode_tokens_per_s": _median([batch_size * decode_tokens / t for _, t in times[name]]),
            "dtype": dtype_name(model), "device": str(device),
            "threads": torch.get_num_threads(),
            **peak_memory(device),
            "params": params,
        }
        results[name] = result
    return results


def measure_speed(model: torch.nn.Module, **settings: Any) -> dict[str, Any]:
    """Prefill and greedy-decode throughput of ``model`` (settings as :func:`compare_speed`)."""
    return compare_speed(model, {"model": contextlib.nullcontext}, **settings)["model"]
