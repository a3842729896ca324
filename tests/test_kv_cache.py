"""A pruned model computes the same logits and tokens with a KV cache as without one.

Removing layer 0's attention is the hard case: transformers reads the cache length (and so every
later token's position) from layer 0's slot. These tests cover every family, the manual step loop,
``generate`` greedy with the default (dynamic / sliding-window) cache and with a static cache, a cache
allocated in advance, and whatever name the installed transformers gives the cache argument.
"""

import pytest
import torch
from transformers import StaticCache

from conftest import FAMILIES, tiny_model
from secateurs import Block, ModelAdapter, load_pruned
from secateurs.models.adapter import SkippedAttention
from secateurs.compat import cache_keyword, output_cache, version_warning
from secateurs.models.checkpoint import save_pruned

REMOVED = [Block("mha", 0), Block("mha", 2), Block("mlp", 1)]
PROMPT, NEW = 30, 12  # 42 tokens: past Gemma 3's sliding window of 32 in the tiny config


def _ids(length, seed=0):
    return torch.randint(3, 250, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=FAMILIES)
def pruned(request, byte_tokenizer, tmp_path_factory):
    """A tiny model of each family with layer 0's attention removed, saved and reloaded."""
    path = tmp_path_factory.mktemp(request.param) / "m"
    save_pruned(ModelAdapter(tiny_model(request.param)), byte_tokenizer, REMOVED, path, {})
    return load_pruned(path).model


@torch.no_grad()
def test_step_loop_with_cache_equals_full_forward(pruned):
    prompt, rest = _ids(PROMPT), _ids(NEW, seed=1)
    full = pruned(torch.cat([prompt, rest], 1), use_cache=False).logits
    keyword = cache_keyword(pruned)
    out = pruned(prompt, use_cache=True)
    cache, steps = output_cache(out), [out.logits]
    for t in range(NEW):
        out = pruned(rest[:, t : t + 1], use_cache=True, **{keyword: cache})
        cache = output_cache(out)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cache_implementation", [None, "static"])
@torch.no_grad()
def test_generate_with_cache_equals_without(pruned, cache_implementation):
    prompt = _ids(PROMPT)
    settings = dict(max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    without = pruned.generate(prompt, use_cache=False, **settings)
    with_cache = pruned.generate(prompt, use_cache=True, cache_implementation=cache_implementation, **settings)
    assert without.shape[1] == PROMPT + NEW
    assert torch.equal(with_cache, without)


@torch.no_grad()
def test_scores_with_cache_equal_scores_without(pruned):
    """Stricter than equal tokens: the logits of every generated step agree."""
    prompt = _ids(PROMPT)
    settings = dict(max_new_tokens=NEW, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    a = pruned.generate(prompt, use_cache=True, **settings)
    b = pruned.generate(prompt, use_cache=False, **settings)
    torch.testing.assert_close(torch.stack(a.logits), torch.stack(b.logits), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_static_cache_allocated_in_advance(pruned):
    """A static cache whose slots were allocated at full size before the first token (as for export)."""
    config = pruned.config
    prompt, rest = _ids(PROMPT), _ids(NEW, seed=1)
    full = pruned(torch.cat([prompt, rest], 1), use_cache=False).logits
    cache = StaticCache(config=config, max_cache_len=PROMPT + NEW)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache.early_initialization(batch_size=1, num_heads=config.num_key_value_heads, head_dim=head_dim,
                               dtype=pruned.dtype, device=pruned.device)
    keyword = cache_keyword(pruned)
    logits = [pruned(prompt, use_cache=True, **{keyword: cache}).logits]
    for t in range(NEW):
        logits.append(pruned(rest[:, t : t + 1], use_cache=True, **{keyword: cache}).logits)
    torch.testing.assert_close(torch.cat(logits, 1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("style", ["cache", "past_key_values", "past_key_value", "positional"])
def test_skipped_attention_finds_the_cache_under_any_name(style):
    from transformers import DynamicCache

    cache, hidden = DynamicCache(), torch.randn(2, 5, 8)
    skipped = SkippedAttention(layer_idx=0)
    out, weights = skipped(hidden, cache) if style == "positional" else skipped(hidden_states=hidden, **{style: cache})
    assert torch.equal(out, torch.zeros_like(hidden)) and weights is None
    assert cache.get_seq_length(0) == 5  # the placeholder keeps layer 0's length right
    skipped(hidden_states=hidden[:, :1], attention_mask=None, **({"cache": cache} if style == "positional" else {style: cache}))
    assert cache.get_seq_length(0) == 6


def test_version_warning_names_the_tested_range():
    assert version_warning("5.24.0") is None and version_warning("5.23.1") is None
    for version in ("5.22.2", "5.25.0", "6.0.0.dev0"):
        note = version_warning(version)
        assert note and version in note and "5.23.x to 5.24.x" in note and "\n" not in note
