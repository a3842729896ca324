import json
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
    from secateurs.plan import CPU_RUNTIME_BYTES, PREFIX_CACHE, make_plan
    from secateurs.registry import run_shape
    from secateurs.structured.methods import SearchOptions, prefix_cache_layers

    adapter = ModelAdapter(tiny_model("llama"))
    windows = _windows()
    plan = make_plan(adapter.model.config, run_shape("blockpruner", windows=5, seqlen=24, batch_size=4))
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
    bound = VocabularyBound.from_current(adapter, adapter.logits(evaluator._states[0][FINAL]), windows.input_ids, top_k=4)
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


def _scored_search(model, windows, halving=None, order_windows=True, steps=3, batch_size=1):
    adapter = ModelAdapter(model)
    evaluator = VariantEvaluator(adapter, windows, batch_size=batch_size, order_windows=order_windows)
    found = greedy_search(adapter, block_units(adapter), evaluator, max_steps=steps, progress=False, halving=halving)
    return found, evaluator.cost


def test_ordering_the_windows_keeps_the_choices_and_scores_bit_identical(family):
    model = tiny_model(family, seed=3)
    windows = _windows(n=8)
    canonical, canonical_cost = _scored_search(model, windows, order_windows=False)
    ordered, ordered_cost = _scored_search(model, windows)
    naive, _ = _search(model, fast=False, steps=3)  # batch 2: the totals are summed the same way
    assert [s.unit for s in ordered] == [s.unit for s in canonical]
    assert [s.score for s in ordered] == [s.score for s in canonical]
    for a, b in zip(ordered, canonical):  # a candidate completed in both has the same total, to the bit
        assert all(a.candidates[k] == v for k, v in b.candidates.items() if v is not None and a.candidates[k] is not None)
    assert ordered_cost.completed + ordered_cost.abandoned == canonical_cost.completed + canonical_cost.abandoned
    assert sum(s.block_window_evals for s in ordered) == ordered_cost.block_window_evals


def test_the_order_puts_a_candidates_likely_worst_batches_first():
    adapter = ModelAdapter(tiny_model("llama"))
    evaluator = VariantEvaluator(adapter, _windows(n=4), batch_size=1)
    evaluator.prepare()
    current = evaluator._current
    assert evaluator.order(range(4)) == sorted(range(4), key=lambda b: -current[b])
    assert evaluator.order(range(4), predicted={2: 1e9, 0: -1.0})[0] == 2  # its own losses come first
    assert evaluator.order(range(4), predicted={2: 1e9, 0: -1.0})[-1] == 0
    assert evaluator.order([3, 1]) == sorted([3, 1], key=lambda b: -current[b])
    evaluator.order_windows = False
    assert evaluator.order(range(4)) == [0, 1, 2, 3]


def test_halving_over_all_windows_at_once_is_the_exact_search():
    from secateurs.structured.search import Halving
    model = tiny_model("qwen2", seed=4)
    windows = _windows(n=6)
    exact, _ = _scored_search(model, windows)
    whole, cost = _scored_search(model, windows, halving=Halving(first_windows=6))
    assert [(s.unit, s.score) for s in whole] == [(s.unit, s.score) for s in exact]
    assert cost.eliminated == 0 and all(not s.screened for s in whole)


def test_halving_eliminates_on_few_windows_and_finishes_the_survivors_exactly(family):
    from secateurs.structured.search import Halving
    model = tiny_model(family, seed=3)
    windows = _windows(n=8)
    exact, exact_cost = _scored_search(model, windows, steps=2)
    halved, cost = _scored_search(model, windows, halving=Halving(first_windows=1, keep=0.5), steps=2)
    for step in halved:
        finished = {k: v for k, v in step.candidates.items() if v is not None}
        assert step.screened and not set(step.screened) & set(finished)
        assert set(step.screened) | set(step.candidates) == set(step.candidates)  # every candidate accounted for
        assert step.score == finished[step.unit] == min(finished.values())
    # The survivors' totals are exact: bit-identical to the naive search's (every candidate completes there).
    adapter = ModelAdapter(model)
    naive = greedy_search(adapter, block_units(adapter), VariantEvaluator(adapter, windows, batch_size=1, fast=False),
                          max_steps=1, progress=False)[0]
    finished = {k: v for k, v in halved[0].candidates.items() if v is not None}
    assert finished and all(naive.candidates[k] == v for k, v in finished.items())
    assert cost.eliminated > 0 and cost.block_window_evals < exact_cost.block_window_evals


def test_halving_is_refused_for_the_one_shot_ranking_and_checked(tiny_model_dir, data_dir, tmp_path, capsys):
    from secateurs.cli import main
    common = [str(tiny_model_dir), "--data-dir", str(data_dir), "--samples", "4", "--seqlen", "32", "--blocks", "1",
              "--device", "cpu", "--eval-max-windows", "2"]
    assert main(["--quiet", "prune", *common, "--method", "one-shot-ppl", "--search", "halving", "--out", str(tmp_path / "a")]) != 0
    assert "--search halving is for the greedy searches" in capsys.readouterr().err
    assert main(["--quiet", "prune", *common, "--method", "blockpruner", "--search", "halving", "--halving-keep", "1.5",
                 "--out", str(tmp_path / "b")]) != 0
    assert "--halving-keep must be in (0, 1), got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert main(["--quiet", "prune", *common, "--method", "blockpruner", "--search", "halving", "--halving-windows", "1",
                 "--batch-size", "1", "--out", str(tmp_path / "c")]) == 0
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["search"].startswith("successive halving (approximate)") and report["recipe"]["search"] == "halving"
    assert report["search_cost"]["eliminated"] > 0
    assert "Search: successive halving (approximate)" in (tmp_path / "c" / "report.md").read_text()


def test_a_batch_known_and_scored_again_is_refused():
    import pytest
    adapter = ModelAdapter(tiny_model("llama"))
    evaluator = VariantEvaluator(adapter, _windows(n=4), batch_size=1)
    evaluator.prepare()
    unit = block_units(adapter)[0]
    known = evaluator.score(unit, [0, 1]).exact
    with pytest.raises(ValueError, match="count twice"):
        evaluator.score(unit, [1, 2, 3], known=known)
    assert evaluator.score(unit, [2, 3], known=known).total == evaluator.score(unit).total  # bit-identical
