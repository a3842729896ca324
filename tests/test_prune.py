import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from conftest import cli_error as _err
from conftest import tiny_model
from secateurs import Block, DataSpec, EvalSpec, ModelAdapter, OutputSpec, load_pruned, prune
from secateurs.structured.search import removal_ratio



def _prune(model, method="blockpruner", data_dir=None, out=None, eval_ppl=("wikitext2",), **options):
    """A small structured prune: 20 Alpaca documents in windows of 32 tokens, 2 evaluation windows."""
    return prune(model, method, options, data=DataSpec(calib="alpaca", samples=20, seqlen=32, data_dir=data_dir),
                 evaluation=EvalSpec(ppl=eval_ppl, max_windows=2), output=OutputSpec(out), progress=False)


def _ids(n=1, length=20, seed=0):
    return torch.randint(3, 250, (n, length), generator=torch.Generator().manual_seed(seed))


def _saved_keys(directory):
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_prune_exports_smaller_model_that_reloads_identically(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "pruned"
    result = _prune(str(tiny_model_dir), blocks=3, data_dir=data_dir, out=out)
    report = json.loads((out / "report.json").read_text())
    assert report["removal_order"] == [s["unit"] for s in report["steps"]] and len(report["steps"]) == 3
    assert [len(s["removed"]) for s in report["steps"]] == [1, 2, 3]  # nested sets, every level saved
    assert report["calibration"]["protocol"]["sample_ids"] and report["environment"]["versions"]["torch"]
    assert report["pruned_params"] == ModelAdapter(result.model.model).total_num_params()
    assert "| 3 |" in (out / "report.md").read_text()
    for figure in ("removed_blocks.png", "ppl_vs_ratio.png"):  # report plots, referenced from report.md
        assert (out / figure).read_bytes()[:4] == b"\x89PNG" and f"]({figure})" in (out / "report.md").read_text()
    keys = _saved_keys(out)
    for block in result.removed:
        prefix = f"model.layers.{block.layer}.{'self_attn' if block.kind == 'mha' else 'mlp'}."
        assert not any(k.startswith(prefix) for k in keys), block
    reloaded = load_pruned(out)
    assert ModelAdapter(reloaded.model).removed_blocks() == sorted(result.removed)
    with torch.no_grad():
        assert torch.equal(reloaded.model(_ids()).logits, result.model.model(_ids()).logits)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_whole_layers_export_is_a_plain_checkpoint(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "fewer-layers"
    result = _prune(str(tiny_model_dir), method="layer-search", blocks=1, data_dir=data_dir, out=out)
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert plain.config.num_hidden_layers == 2
    assert json.loads((out / "config.json").read_text())["secateurs_pruning"]["format"] == "fewer-layers"
    with torch.no_grad():
        assert torch.equal(plain(_ids()).logits, result.model.model(_ids()).logits)
        a = plain.generate(_ids(length=8), max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        b = plain.generate(_ids(length=8), max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(a, b)


def test_saved_search_reapplies_at_a_lower_level(tiny_model_dir, data_dir, tmp_path):
    full = _prune(str(tiny_model_dir), blocks=3, data_dir=data_dir, out=tmp_path / "k3")
    again = _prune(str(tiny_model_dir), from_report=tmp_path / "k3" / "report.json", blocks=2,
                  data_dir=data_dir)
    assert [b.name for b in sorted(again.removed)] == full.report.steps[1].removed
    assert again.report.search_cost == {}


@pytest.mark.parametrize("method", ["shortgpt", "relative-magnitude", "one-shot-ppl", "finercut", "layer-search"])
def test_baselines_select_nested_sets(method, tiny_model_dir, data_dir):
    result = _prune(str(tiny_model_dir), method=method, blocks=2, data_dir=data_dir, eval_ppl=())
    steps = result.report.steps
    assert len(steps) == 2 and set(steps[0].removed) < set(steps[1].removed)
    assert result.report.ratio == steps[-1].ratio > 0


def test_shortgpt_scores_are_block_influence(data_dir, byte_tokenizer):
    from secateurs.data import token_windows
    from secateurs import StatisticOptions
    from secateurs.registry import get_method
    model = tiny_model("llama")
    adapter = ModelAdapter(model)
    windows = token_windows("alpaca", byte_tokenizer, 32, data_dir=data_dir, samples=5)
    steps = get_method("shortgpt").select(adapter, windows, StatisticOptions(blocks=3), progress=False).steps
    with torch.no_grad():
        hidden = model(windows.input_ids, output_hidden_states=True).hidden_states
    # hidden_states[i] enters layer i; the last one is after the final norm, so take layer outputs by hooks
    bi = {}
    for i in range(2):
        cos = torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 1], dim=-1)
        bi[f"layer.{i}"] = (1 - cos).double().mean().item()
    for step in steps:
        if step.unit in bi:
            assert abs(step.score - bi[step.unit]) < 1e-5


def test_finercut_fast_equals_naive(tiny_model_dir, data_dir):
    a = _prune(str(tiny_model_dir), method="finercut", blocks=3, data_dir=data_dir, eval_ppl=())
    b = _prune(str(tiny_model_dir), method="finercut", blocks=3, naive=True, data_dir=data_dir, eval_ppl=())
    assert a.report.removal_order == b.report.removal_order
    assert [s.score for s in a.report.steps] == [s.score for s in b.report.steps]


@pytest.mark.parametrize(
    "shape, removed, expected",
    [
        (dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32), (1, 0), 0.9960),
        (dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32), (0, 1), 2.0075),
        (dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32), (12, 5), 21.99),
        (dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40), (17, 7), 25.12),
    ],
)
def test_parameter_ratio_matches_the_paper(shape, removed, expected):
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=32000, **shape))
    adapter = ModelAdapter(model)
    blocks = [Block("mha", i) for i in range(removed[0])] + [Block("mlp", i) for i in range(removed[1])]
    ratio = 100 * removal_ratio(adapter, blocks, adapter.total_num_params())
    assert round(ratio, 4 if expected < 5 else 2) == expected


def test_bad_prune_input(capsys, tiny_model_dir, data_dir, tmp_path):
    base = ["prune", str(tiny_model_dir), "--data-dir", str(data_dir), "--seqlen", "32", "--samples", "5"]
    assert "more than the 6 candidate units" in _err(capsys, *base, "--blocks", "7")
    assert "--ratio must be in (0, 1)" in _err(capsys, *base, "--ratio", "1.5")
    assert "--blocks K or --ratio R" in _err(capsys, *base)
    assert "unknown method 'sleb'" in _err(capsys, *base, "--method", "sleb", "--blocks", "1")
    assert "longer than the 256 positions" in _err(capsys, *base[:-4], "--seqlen", "4096", "--samples", "1", "--blocks", "1")
    short = tmp_path / "short.txt"
    short.write_text("a few words\n")
    assert "need at least 200" in _err(capsys, *base[:-4], "--calib", str(short), "--seqlen", "200", "--samples", "1",
                                       "--blocks", "1")
    (tmp_path / "exists").mkdir()
    assert "already exists" in _err(capsys, *base, "--blocks", "1", "--out", str(tmp_path / "exists"))


def test_interrupted_export_leaves_no_directory(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import importlib

    prune_module = importlib.import_module("secateurs.run.frame")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_module, "write_text_atomic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _prune(str(tiny_model_dir), blocks=1, data_dir=data_dir, out=tmp_path / "outs" / "out")
    # neither the output nor a temporary directory; only the checkpoint the same command resumes from
    assert [p.name for p in (tmp_path / "outs").iterdir()] == ["out.checkpoint"]


@pytest.mark.parametrize("method", ["blockpruner", "one-shot-ppl", "shortgpt"])
def test_calibration_ppl_per_step_is_that_of_the_nested_set(method, tiny_model_dir, data_dir, byte_tokenizer):
    from secateurs.data import token_windows
    from secateurs.evaluation.perplexity import perplexity

    blocks = 2 if method == "shortgpt" else 3  # shortgpt removes layers: 3 would be all of them
    result = _prune(str(tiny_model_dir), method=method, blocks=blocks, data_dir=data_dir, eval_ppl=())
    model = load_pruned(tiny_model_dir).model  # the dense model again
    adapter = ModelAdapter(model)
    windows = token_windows("alpaca", byte_tokenizer, 32, data_dir=data_dir, samples=20, seed=0)
    for step, ppl in zip(result.report.steps, result.report.calibration.ppl_per_step):
        with adapter.skipped([Block.parse(n) for n in step.removed]):
            expected = perplexity(model, windows, batch_size=4, progress=False)["ppl"]
        assert ppl == pytest.approx(expected, rel=1e-9), step.removed


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_modes_the_umask_gives(tiny_model_dir, data_dir, tmp_path, umask):
    """Written atomically, yet readable as any plain write would be (not mkdtemp's private 0700 / 0600)."""
    import os
    import stat

    previous = os.umask(umask)
    try:
        out = tmp_path / "pruned"
        _prune(str(tiny_model_dir), blocks=1, data_dir=data_dir, out=out)
    finally:
        os.umask(previous)
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes.pop(".") == 0o777 & ~umask
    assert {"report.json", "report.md", "model.safetensors", "config.json", "ppl_vs_ratio.png"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~umask}, modes
