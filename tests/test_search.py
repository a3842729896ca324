import math

import torch

from conftest import tiny_model
from secateurs import ModelAdapter
from secateurs.models.adapter import Block
from secateurs.data import TokenWindows
from secateurs.structured.search import VariantEvaluator, block_units, greedy_search, layer_units


def _windows(n=5, seqlen=24, seed=0):
    ids = torch.randint(3, 259, (n, seqlen), generator=torch.Generator().manual_seed(seed))
    return TokenWindows(ids, {"windows": n, "seqlen": seqlen})


def _search(model, fast, units_of=block_units, steps=4, batch_size=2, keep_layers=None):
    adapter = ModelAdapter(model)
    evaluator = VariantEvaluator(adapter, _windows(), batch_size=batch_size, fast=fast, keep_layers=keep_layers)
    return greedy_search(adapter, units_of(adapter), evaluator, max_steps=steps, progress=False), evaluator.cost


def test_fast_search_picks_exactly_the_naive_blocks(family):
    model = tiny_model(family, seed=3)
    naive, naive_cost = _search(model, fast=False)
    fast, fast_cost = _search(model, fast=True)
    assert [s.unit for s in fast] == [s.unit for s in naive]
    for a, b in zip(fast, naive):
        assert a.score == b.score  # bit-identical, not merely close
        completed = {k: v for k, v in a.candidates.items() if v is not None}
        assert completed and all(b.candidates[k] == v for k, v in completed.items())
    assert fast_cost.block_window_evals < naive_cost.block_window_evals
    assert naive_cost.abandoned == 0


def test_a_budgeted_prefix_cache_recomputes_and_picks_the_same_blocks(family):
    model = tiny_model(family, seed=3)
    full, full_cost = _search(model, fast=True, steps=3)
    for keep in (1, 2):  # the tiny models have 3 layers: layer 0's input only, then layers 0 and 1
        budgeted, cost = _search(model, fast=True, steps=3, keep_layers=keep)
        assert [s.unit for s in budgeted] == [s.unit for s in full]
        for a, b in zip(budgeted, full):
            assert a.score == b.score  # bit-identical
            assert all(a.candidates[k] == v for k, v in b.candidates.items() if v is not None and a.candidates[k] is not None)
        assert cost.cached_streams_per_batch == keep + 1 < full_cost.cached_streams_per_batch == 7
        assert cost.block_window_evals > full_cost.block_window_evals  # the recomputed layers are counted


def test_max_memory_sizes_the_prefix_cache(capsys):
    import pytest
    from secateurs import SecateursError
    from secateurs.plan import CPU_RUNTIME_BYTES, PREFIX_CACHE, RunShape, make_plan
    from secateurs.structured.methods import SearchOptions, prefix_cache_layers

    adapter = ModelAdapter(tiny_model("llama"))
    windows = _windows()
    plan = make_plan(adapter.model.config, RunShape("blockpruner", windows=5, seqlen=24, batch_size=4))
    stream = windows.input_ids.numel() * adapter.model.config.hidden_size * 4
    assert plan.parts[PREFIX_CACHE] == 7 * stream  # 2L + 1 streams of every window
    fixed = CPU_RUNTIME_BYTES + plan.peak_bytes - plan.parts[PREFIX_CACHE]  # weights, one batch, the runtime
    assert prefix_cache_layers(adapter, windows, SearchOptions(blocks=1)) is None
    assert prefix_cache_layers(adapter, windows, SearchOptions(blocks=1, max_memory="100GB")) is None
    for streams in (2, 3, 6):  # room for that many streams: layer inputs kept = streams - 1 (the last stream)
        budget = str(fixed + streams * stream)
        assert prefix_cache_layers(adapter, windows, SearchOptions(blocks=1, max_memory=budget)) == streams - 1
    with pytest.raises(SecateursError, match="--max-memory 1MB is too small: the search needs about"):
        prefix_cache_layers(adapter, windows, SearchOptions(blocks=1, max_memory="1MB"))
    with pytest.raises(SecateursError, match="cannot read the memory size"):
        SearchOptions(blocks=1, max_memory="lots")


def test_naive_scores_are_the_perplexity_of_each_variant():
    model = tiny_model("llama")
    adapter = ModelAdapter(model)
    steps, _ = _search(model, fast=False, steps=1)
    from secateurs.evaluation.perplexity import window_nlls
    for unit in block_units(adapter)[:3]:
        with adapter.skipped(unit.blocks):
            expected = window_nlls(model, _windows(), batch_size=2, progress=False).double().mean().item()
        assert math.isclose(steps[0].candidates[unit.name], expected, rel_tol=1e-12)
    assert steps[0].score == min(steps[0].candidates.values())


def test_layer_search_fast_equals_naive():
    model = tiny_model("qwen2", seed=1)
    naive, _ = _search(model, fast=False, units_of=layer_units, steps=2)
    fast, _ = _search(model, fast=True, units_of=layer_units, steps=2)
    assert [s.unit for s in fast] == [s.unit for s in naive] and all(s.unit.startswith("layer.") for s in fast)
    assert fast[-1].removed == sorted(fast[-1].removed)


def test_vocabulary_bound_never_exceeds_the_exact_nll(family):
    from secateurs.evaluation.perplexity import next_token_nll
    from secateurs.structured.search import FINAL, VocabularyBound
    model = tiny_model(family, seed=5)
    adapter = ModelAdapter(model)
    windows = _windows(n=3)
    evaluator = VariantEvaluator(adapter, windows, batch_size=3)
    evaluator.prepare()
    bound = VocabularyBound.from_current(adapter, evaluator._states[0][FINAL], windows.input_ids, top_k=4)
    assert len(bound.head.weight) < model.config.vocab_size  # a real subset, or the test proves nothing
    for unit in block_units(adapter):
        with adapter.skipped(unit.blocks):
            logits = model(input_ids=windows.input_ids).logits
            hidden = evaluator._run_layers(0, 0, evaluator._states[0][Block("mha", 0)])
        exact = next_token_nll(logits, windows.input_ids).tolist()
        lower = bound.lower_bound(adapter, hidden)
        assert all(0 <= lo <= ex + 1e-6 for lo, ex in zip(lower, exact)), unit.name
        assert sum(lower) > 0.5 * sum(exact)  # and it is a useful bound, not just 0


def test_states_reused_across_steps_equal_a_fresh_capture():
    model = tiny_model("llama", seed=2)
    adapter = ModelAdapter(model)
    reused = VariantEvaluator(adapter, _windows(), batch_size=2)
    reused.prepare()
    first_capture = reused.cost.block_window_evals
    removed = [Block("mlp", 1), Block("mha", 2)]
    with adapter.skipped(removed):
        reused.prepare()  # only layers 1.. run again
        fresh = VariantEvaluator(adapter, _windows(), batch_size=2)
        fresh.prepare()
    assert reused.cost.block_window_evals - first_capture < fresh.cost.block_window_evals
    for a, b in zip(reused._states, fresh._states):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_bound_abandons_candidates_without_their_full_head():
    model = tiny_model("llama", seed=3)
    _, cost = _search(model, fast=True)
    assert cost.bound_window_evals > 0 and cost.abandoned > 0
    assert cost.head_window_evals < cost.completed * 5 + cost.abandoned * 5


def test_statistics_layer_by_layer_equal_those_of_the_whole_prefix_cache(family, tmp_path):
    from secateurs.models.capture import FINAL
    from secateurs.registry import get_method
    from secateurs.structured.methods import StatisticOptions, _unit_boundaries

    adapter = ModelAdapter(tiny_model(family, seed=2))
    windows = _windows()
    states = VariantEvaluator(adapter, windows, batch_size=2).capture()  # every block's input, all at once
    for method in ("shortgpt", "relative-magnitude"):
        for unit_kind in ("layer", "block"):
            chosen = get_method(method)
            units = chosen.units(adapter, StatisticOptions(blocks=1, unit=unit_kind))
            expected = {}
            for unit in units:
                start, end = _unit_boundaries(adapter, unit)
                values = torch.cat([chosen.statistic(s[start].float(), s[end].float()).flatten() for s in states])
                expected[unit.name] = values.double().mean().item()
            for offload in ("none", "disk"):
                options = StatisticOptions(blocks=len(units) // 2, unit=unit_kind, batch_size=2, offload=offload,
                                           offload_dir=str(tmp_path))
                steps = chosen.select(adapter, windows, options, progress=False).steps
                assert all(step.score == expected[step.unit] for step in steps)  # bit-identical
                assert not list(tmp_path.iterdir())
    assert FINAL in states[0]
