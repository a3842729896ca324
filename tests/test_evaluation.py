import json

import pytest
import torch
import torch.nn.functional as F

from conftest import cli_error as _err
from conftest import tiny_model
from secateurs.cli import main
from secateurs.evaluation.metrics import balanced_accuracy, macro_f1, mean_stderr, rouge_scores
from secateurs.evaluation.scoring import encode_pair, loglikelihoods, loglikelihoods_unbatched, run_task
from secateurs.evaluation.tasks import Item, Task, TaskData, load_task, winogrande_item


def _direct(model, tokenizer, context, continuation):
    """Token by token: log p(token_t | everything before), summed over the continuation."""
    ctx, cont = encode_pair(tokenizer, context, continuation)
    total = 0.0
    for t in range(len(cont)):
        ids = torch.tensor([ctx + cont[:t]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        total += F.log_softmax(logits.float(), dim=-1)[cont[t]].item()
    return total


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_loglikelihoods_equal_a_token_by_token_computation(family, byte_tokenizer):
    model = tiny_model(family, seed=1)
    item = Item("0", 0, ["Question: why?\nAnswer:"] * 3, [" because", " no", " it is so long an answer"],
                ["because", "no", "it is so long an answer"])
    direct = [_direct(model, byte_tokenizer, c, t) for c, t in zip(item.contexts, item.continuations)]
    cached = loglikelihoods(model, byte_tokenizer, item)  # shared context once + batched choices
    unbatched = loglikelihoods_unbatched(model, byte_tokenizer, item)
    assert cached == pytest.approx(direct, rel=1e-4, abs=1e-4)
    assert unbatched == pytest.approx(direct, rel=1e-4, abs=1e-4)


def test_winogrande_compares_the_span_after_the_blank(byte_tokenizer):
    item = winogrande_item({"id": 3, "query": "Sarah beat Maria so _ got the prize.", "choices": ["Sarah", "Maria"], "gold": 0})
    assert item.contexts == ["Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"]
    assert item.continuations == [" got the prize."] * 2
    model = tiny_model("llama", seed=2)
    scores = loglikelihoods(model, byte_tokenizer, item)  # different contexts: one padded batch
    direct = [_direct(model, byte_tokenizer, c, t) for c, t in zip(item.contexts, item.continuations)]
    assert scores == pytest.approx(direct, rel=1e-4, abs=1e-4)


def test_trailing_context_space_moves_to_the_continuation(byte_tokenizer):
    ctx, cont = encode_pair(byte_tokenizer, "Answer: ", "yes")
    assert byte_tokenizer.decode(ctx) == "Answer:" and byte_tokenizer.decode(cont) == " yes"


def test_acc_norm_divides_by_characters(byte_tokenizer, monkeypatch):
    import secateurs.evaluation.scoring as scoring
    item = Item("0", 1, ["q"] * 2, [" a", " bbbb"], ["a", "bbbb"])
    monkeypatch.setattr(scoring, "loglikelihoods", lambda m, t, i: [-2.0, -4.0])
    task = Task("t", "", "multiple_choice", "", lambda r: item, ("acc", "acc_norm"))
    res = run_task(tiny_model("llama"), byte_tokenizer, TaskData(task, [item]), progress=False)
    # acc picks choice 0 (-2 > -4); acc_norm compares -2/1 with -4/4 = -1 and picks choice 1
    assert res["metrics"]["acc"] == 0.0 and res["metrics"]["acc_norm"] == 1.0
    assert res["predicted"] == [1, 0]  # how often each choice was the (unnormalised) prediction


def test_metrics_on_known_values():
    assert macro_f1([0, 0, 1, 2], [0, 1, 1, 2], 3) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert balanced_accuracy([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx((2 / 3 + 1) / 2)
    assert mean_stderr([1.0, 0.0, 1.0, 0.0]) == pytest.approx((1 / 3) ** 0.5 / 2)


def test_rouge_matches_known_values():
    scores = rouge_scores(["the cat sat on the mat"], ["the cat is on the mat"])
    # unigrams: 5 of 6 shared -> P = R = F = 5/6; bigrams: "the cat", "on the", "the mat" = 3 of 5
    assert scores["rouge1"] == pytest.approx(5 / 6)
    assert scores["rouge2"] == pytest.approx(3 / 5)
    assert scores["rougeL"] == pytest.approx(5 / 6)
    assert rouge_scores(["identical words"], ["identical words"])["rouge2"] == pytest.approx(1.0)


def test_tasks_load_with_the_harness_prompts(data_dir):
    piqa = load_task("piqa", data_dir, limit=5)
    assert len(piqa.items) == 5 and piqa.items[0].contexts[0].startswith("Question: ") and piqa.items[0].contexts[0].endswith("\nAnswer:")
    assert piqa.protocol["sha256"] and piqa.protocol["rows_used"] == 5
    sampled = load_task("arc_easy", data_dir, sample=7, seed=3)
    assert len(sampled.items) == 7 and [i.id for i in sampled.items] == [i.id for i in load_task("arc_easy", data_dir, sample=7, seed=3).items]
    pubmed = load_task("pubmedqa", data_dir)
    assert len(pubmed.items) == 500 and pubmed.items[0].choices == ["yes", "no", "maybe"]
    legal = load_task("legalbench:overruling", data_dir, limit=3)
    assert legal.items[0].choices == ["No", "Yes"]
    meqsum = load_task("meqsum", data_dir, limit=2)
    assert meqsum.items[0].reference and "Summary:" in meqsum.items[0].contexts[0]


def test_bad_evaluation_input(capsys, tiny_model_dir, data_dir, tmp_path):
    base = ["eval", str(tiny_model_dir), "--data-dir", str(data_dir)]
    err = _err(capsys, *base, "--tasks", "jeopardy")
    assert "unknown task 'jeopardy'" in err and "piqa" in err
    assert "--limit must be at least 1" in _err(capsys, *base, "--tasks", "piqa", "--limit", "0")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n{"query": oops}\n')
    assert f"{bad}:2: malformed JSON" in _err(capsys, *base, "--tasks", str(bad))
    gold = tmp_path / "gold.jsonl"
    gold.write_text('{"query": "q", "choices": ["a", "b"], "gold": 5}\n')
    assert f"{gold}:1: gold index 5 is out of range" in _err(capsys, *base, "--tasks", str(gold))
    out = tmp_path / "results.json"
    assert _err(capsys, *base, "--tasks", "nope", "--out", str(out)) and not out.exists()


def test_eval_cli_writes_results_and_samples(tiny_model_dir, data_dir, tmp_path, capsys):
    out, log = tmp_path / "r.json", tmp_path / "s.jsonl"
    code = main(["--quiet", "eval", str(tiny_model_dir), "--data-dir", str(data_dir), "--tasks", "piqa,winogrande,pubmedqa",
                 "--limit", "3", "--ppl", "wikitext2", "--seqlen", "64", "--max-windows", "2", "--speed",
                 "--prompt-tokens", "16", "--decode-tokens", "4", "--out", str(out), "--log-samples", str(log)])
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["tasks"]) == {"piqa", "winogrande", "pubmedqa"}
    assert result["tasks"]["piqa"]["protocol"]["prompt"] and result["tasks"]["pubmedqa"]["metrics"]["macro_f1"] >= 0
    assert result["speed"]["prefill_tokens_per_s"] > 0 and result["speed"]["batch_size"] == 1
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 9 and all(len(r["loglikelihoods"]) == (2 if r["task"] != "pubmedqa" else 3) for r in rows)
    assert "| piqa | 3 | acc_norm |" in capsys.readouterr().out


def test_builtin_scores_agree_with_lm_evaluation_harness(data_dir, byte_tokenizer):
    """The same rows scored by lm-eval's own HFLM wrapper (installed with the dev extra) give the same numbers."""
    from secateurs.evaluation.lm_eval_bridge import lm_eval_scorer

    model = tiny_model("qwen2", seed=3)
    reference = lm_eval_scorer(model, byte_tokenizer)
    for task in ("piqa", "winogrande", "hellaswag", "pubmedqa"):
        for item in load_task(task, data_dir, limit=3).items:
            ours = loglikelihoods(model, byte_tokenizer, item)
            theirs = reference(model, byte_tokenizer, item)
            assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-3), (task, item.id)


def test_legal_suite_reports_the_macro_average(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "legal.json"
    assert main(["--quiet", "eval", str(tiny_model_dir), "--data-dir", str(data_dir), "--tasks",
                 "legalbench:overruling,legalbench:proa", "--limit", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    per_task = [result["tasks"][t]["metrics"]["balanced_acc"] for t in ("legalbench:overruling", "legalbench:proa")]
    assert result["legalbench_macro_average"]["balanced_acc"] == pytest.approx(sum(per_task) / 2)
