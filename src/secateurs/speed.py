"""Speed of a model: prefill and decode tokens/s and peak memory, with the settings stated."""

from __future__ import annotations

import resource
import time
from typing import Any

import torch

DEFAULT_PROMPT_TOKENS = 128
DEFAULT_DECODE_TOKENS = 32
DEFAULT_REPEATS = 3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_speed(model: torch.nn.Module, batch_size: int = 1, prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
                  decode_tokens: int = DEFAULT_DECODE_TOKENS, repeats: int = DEFAULT_REPEATS, seed: int = 0) -> dict[str, Any]:
    """Median over ``repeats`` (after one warm-up) of prefill and greedy-decode throughput with a KV cache.

    Unstructured zeros give no speed-up here: dense kernels multiply zeros like any other number.
    """
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch_size, prompt_tokens), generator=torch.Generator().manual_seed(seed)).to(device)
    prefill, decode = [], []
    for attempt in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        _sync(device)
        t_prefill = time.perf_counter() - start
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(decode_tokens):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        _sync(device)
        t_decode = time.perf_counter() - start
        if attempt:  # the first run warms up
            prefill.append(batch_size * prompt_tokens / t_prefill)
            decode.append(batch_size * decode_tokens / t_decode)
    result = {
        "batch_size": batch_size, "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens, "repeats": repeats,
        "prefill_tokens_per_s": sorted(prefill)[len(prefill) // 2],
        "decode_tokens_per_s": sorted(decode)[len(decode) // 2],
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params": sum(p.numel() for p in model.parameters()),
    }
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result
