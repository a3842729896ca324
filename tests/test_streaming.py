"""Streamed weights (--offload disk): the model on the meta device, one layer read from its files at a time.

Everything must equal the run with the whole model in memory, bit for bit: the pruned weights, the
perplexities, the sparsity report; the output is a checkpoint plain transformers loads; nothing is
left behind in the offload directory.
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from conftest import cli_error, tiny_model
from secateurs import DataSpec, EvalSpec, ModelAdapter, OutputSpec, SecateursError, load_model, prune
from secateurs.evaluation.perplexity import perplexity
from secateurs.models.loading import load_model_streamed


def _saved(family, path, tokenizer, tie=False):
    tiny_model(family, tie=tie, seed=3).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _weights(directory):
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


@pytest.mark.parametrize("family,tie", [("llama", True), ("mistral", False), ("qwen2", False), ("gemma3_text", True)])
def test_layer_by_layer_perplexity_equals_the_whole_model(family, tie, tmp_path, byte_tokenizer):
    from secateurs.data import TokenWindows

    path = _saved(family, tmp_path / family, byte_tokenizer, tie)
    windows = TokenWindows(torch.randint(0, 250, (5, 20), generator=torch.Generator().manual_seed(0)), {"dataset": "random"})
    whole = perplexity(load_model(str(path), device="cpu").model, windows, batch_size=2, progress=False)
    lm = load_model_streamed(str(path), device="cpu", work_dir=tmp_path)
    assert all(p.device.type == "meta" for p in lm.model.parameters())  # nothing of the weights in memory
    streamed = perplexity(lm.model, windows, batch_size=2, progress=False, adapter=ModelAdapter(lm.model, lm.weights))
    assert streamed["window_nll"] == whole["window_nll"] and streamed["ppl"] == whole["ppl"]
    assert all(p.device.type == "meta" for p in lm.model.parameters())  # released again after each part
    lm.weights.close()
    assert [p.name for p in tmp_path.iterdir()] == [family]


@pytest.mark.parametrize("method,options", [("wanda", {"sparsity": 0.5}), ("sparsegpt", {"nm": (2, 4)}),
                                            ("magnitude", {"sparsity": 0.4})])
def test_streamed_prune_equals_the_prune_in_memory(method, options, tmp_path, byte_tokenizer, data_dir):
    path = _saved("qwen2", tmp_path / "model", byte_tokenizer)
    offload_dir = tmp_path / "offload"
    offload_dir.mkdir()
    reports, weights = {}, {}
    for offload in ("none", "disk"):
        out = tmp_path / f"out-{offload}"
        prune(str(path), method, {**options, "offload": offload, "offload_dir": str(offload_dir), "batch_size": 2},
              data=DataSpec(calib=None if method == "magnitude" else "c4", samples=2, seqlen=32, data_dir=data_dir),
              evaluation=EvalSpec(max_windows=3), output=OutputSpec(out), progress=False, device="cpu")
        reports[offload] = json.loads((out / "report.json").read_text())
        weights[offload] = _weights(out)
        reloaded = AutoModelForCausalLM.from_pretrained(out)  # plain transformers loads the sharded output
        assert all(torch.equal(p, weights[offload][n]) for n, p in reloaded.state_dict().items() if n in weights[offload])
    assert weights["disk"].keys() == weights["none"].keys()
    for name, tensor in weights["none"].items():
        assert torch.equal(weights["disk"][name], tensor), name  # bit-identical pruned weights
    assert reports["disk"]["sparsity"] == reports["none"]["sparsity"]
    for name, entry in reports["none"]["evaluation"].items():
        assert reports["disk"]["evaluation"][name]["dense_ppl"] == entry["dense_ppl"]
        assert reports["disk"]["evaluation"][name]["pruned_ppl"] == entry["pruned_ppl"]
    assert reports["disk"]["model"]["weights"] == "streamed"
    assert not list(offload_dir.iterdir())  # the run's work directory is gone


def test_streamed_run_refuses_what_needs_the_whole_model(tmp_path, byte_tokenizer, data_dir, capsys):
    path = _saved("llama", tmp_path / "model", byte_tokenizer)
    base = ["prune", str(path), "--method", "wanda", "--sparsity", "0.5", "--offload", "disk", "--data-dir",
            str(data_dir), "--seqlen", "16", "--samples", "1", "--eval-max-windows", "1"]
    line = cli_error(capsys, *base, "--out", str(tmp_path / "o"), "--format", "gguf")
    assert "--format gguf needs the whole model in memory" in line
    assert not (tmp_path / "o").exists()
    line = cli_error(capsys, "prune", "someone/some-model", *base[2:], "--out", str(tmp_path / "o"))
    assert "--offload disk needs a local model directory, a GGUF file or a built-in alias" in line
    line = cli_error(capsys, *base, "--offload-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert "cannot create an offload directory in" in line and "missing" in line
    assert not (tmp_path / "o").exists()


def test_a_broken_weight_in_a_streamed_file_is_one_clear_error(tmp_path, byte_tokenizer, data_dir):
    path = _saved("llama", tmp_path / "model", byte_tokenizer)
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SecateursError, match="weight model.layers.1.mlp.up_proj.weight holds NaN"):
        prune(str(path), "wanda", {"sparsity": 0.5, "offload": "disk", "offload_dir": str(tmp_path)},
              data=DataSpec(samples=1, seqlen=16, data_dir=data_dir), evaluation=EvalSpec(max_windows=1),
              progress=False, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_onloading_gives_back_the_meta_parameters_with_their_ties(tmp_path, byte_tokenizer):
    lm = load_model_streamed(str(_saved("llama", tmp_path / "m", byte_tokenizer, tie=True)), device="cpu")
    adapter = ModelAdapter(lm.model, lm.weights)
    before = {n: p for n, p in lm.model.named_parameters(remove_duplicate=False)}
    assert lm.model.lm_head.weight is lm.model.model.embed_tokens.weight
    with lm.weights.onloaded(adapter.lm_head, adapter.layers[0], writable=True):
        assert adapter.lm_head.weight.device.type == "cpu" and adapter.layers[0].mlp.up_proj.weight.abs().sum() > 0
    after = {n: p for n, p in lm.model.named_parameters(remove_duplicate=False)}
    assert all(after[n] is p for n, p in before.items())
    assert adapter.total_num_params() == ModelAdapter(tiny_model("llama", tie=True, seed=3)).total_num_params()
    lm.weights.close()


# --- --max-memory: the offload is chosen from the plan's prediction -------------------------------------
def test_max_memory_chooses_the_offload_from_the_plan(tmp_path, byte_tokenizer, data_dir, capsys):
    from secateurs.plan import CPU_RUNTIME_BYTES, load_config, make_plan
    from secateurs.registry import run_shape

    path = _saved("llama", tmp_path / "model", byte_tokenizer)
    plan = make_plan(load_config(str(path)), run_shape("wanda", windows=2, seqlen=32, batch_size=4))
    assert plan.offloaded_peak_bytes < plan.peak_bytes
    between = CPU_RUNTIME_BYTES + (plan.offloaded_peak_bytes + plan.peak_bytes) // 2
    for budget, chosen in ((str(CPU_RUNTIME_BYTES + 2 * plan.peak_bytes), "none"), (str(between), "disk")):
        out = tmp_path / f"out-{chosen}"
        prune(str(path), "wanda", {"sparsity": 0.5, "max_memory": budget},
              data=DataSpec(samples=2, seqlen=32, data_dir=data_dir), evaluation=EvalSpec(max_windows=1),
              output=OutputSpec(out), device="cpu")
        report = json.loads((out / "report.json").read_text())
        assert report["recipe"]["offload"] == chosen and report["recipe"]["max_memory"] == budget
        assert (report["model"].get("weights") == "streamed") == (chosen == "disk")
        assert f"--offload {chosen}" in capsys.readouterr().err


@pytest.mark.parametrize("budget,message", [
    ("8XB", "cannot read the memory size '8XB'"),
    ("1MB", "--max-memory 1MB is too small: this run needs about 0.5"),
])
def test_a_bad_or_too_small_budget_is_one_line(budget, message, tmp_path, byte_tokenizer, data_dir, capsys):
    path = _saved("llama", tmp_path / "model", byte_tokenizer)
    line = cli_error(capsys, "prune", str(path), "--method", "wanda", "--sparsity", "0.5", "--max-memory", budget,
                     "--data-dir", str(data_dir), "--out", str(tmp_path / "out"))
    assert message in line
    assert not (tmp_path / "out").exists()


def test_a_full_disk_while_streaming_is_one_line_and_leaves_nothing(tmp_path, byte_tokenizer, data_dir, monkeypatch):
    import shutil
    from collections import namedtuple

    path = _saved("llama", tmp_path / "model", byte_tokenizer)
    offload = tmp_path / "offload"
    offload.mkdir()
    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    # the offload directory's filesystem is full (the output's is checked before the run, so keep it free)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10, 10, 0) if str(p).startswith(str(offload)) else real(p))
    with pytest.raises(SecateursError, match="not enough space"):
        prune(str(path), "wanda", {"sparsity": 0.5, "offload": "disk", "offload_dir": str(offload)},
              data=DataSpec(samples=1, seqlen=16, data_dir=data_dir), evaluation=EvalSpec(ppl=[]),
              output=OutputSpec(tmp_path / "out"), progress=False, device="cpu")
    assert not list(offload.iterdir()) and not (tmp_path / "out").exists()
