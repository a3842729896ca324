"""GGUF export, proven in llama.cpp (through llama-cpp-python): the engine computes what secateurs computes."""

import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import cli_error as _err
from secateurs import Block, ModelAdapter
from secateurs.export.gguf import write_gguf
from secateurs.models.builtin import builtin_gguf

try:
    import llama_cpp
except ImportError:  # pragma: no cover - CI installs it (scripts/install.sh builds it)
    llama_cpp = None

needs_llama_cpp = pytest.mark.skipif(llama_cpp is None, reason="llama-cpp-python is not installed: "
                                     "bash scripts/install.sh builds it, and CI runs these tests")
# float32 weights and a float32 KV cache in both; llama.cpp sums in another order, so log-probabilities
# agree to 2e-5 on the tiny models and 3e-4 on SmolLM2 (measured); 2e-3 leaves room and still catches a
# wrong layout, which moves them by 0.05 or more (test_the_rope_layout_matters). With llama.cpp's default
# float16 KV cache they differ by up to 2e-2.
F32_TOLERANCE = 2e-3
F32_CACHE = 0  # GGML_TYPE_F32


def _smollm2_gguf():
    return builtin_gguf("smollm2-135m")[1]


def _peaky_llama(seed=0, layers=4):
    """A tiny Llama with SmolLM2's vocabulary and weights large enough that wrong wiring shows in the logits."""
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=49152, max_position_embeddings=256, tie_word_embeddings=True,
                         rms_norm_eps=1e-5)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1.5 / p.shape[1] ** 0.5)
            else:
                p.uniform_(0.5, 1.5)
    return model


def _torch_logprobs(model, tokens):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([tokens])).logits[0].float(), -1).numpy()


def _engine_logprobs(path, tokens):
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, n_threads=2, verbose=False,
                          type_k=F32_CACHE, type_v=F32_CACHE)  # llama.cpp keeps K and V in float16 by default
    llm.eval(tokens)
    logits = np.array(llm.scores[:len(tokens)], dtype=np.float64)
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


TOKENS = [1, 504, 3458, 282, 260, 1345, 30, 2, 7041, 314, 9856, 17, 400, 1281, 42, 88]


@needs_llama_cpp
@pytest.mark.parametrize("removed", [
    [],  # dense
    ["mha.0"],  # layer 0's attention: written as a zero attention (llama.cpp cannot load it absent)
    ["mlp.1"],  # an MLP whose attention stays: a zero MLP keeps llama.cpp's residual add
    ["mha.2", "mlp.2"],  # a whole layer: left out
    ["mha.3"],  # the last layer's attention
    ["mha.0", "mlp.0", "mha.1", "mlp.3"],  # several at once, the first written layer without attention
])
def test_llama_cpp_computes_what_secateurs_computes(removed, tmp_path):
    model = _peaky_llama()
    adapter = ModelAdapter(model)
    adapter.remove_blocks([Block.parse(n) for n in removed])
    record = write_gguf(adapter, tmp_path / "model.gguf", _smollm2_gguf())
    assert record["layers"] == 4 - sum(1 for i in range(4) if {f"mha.{i}", f"mlp.{i}"} <= set(removed))
    ours, engine = _torch_logprobs(model, TOKENS), _engine_logprobs(tmp_path / "model.gguf", TOKENS)
    assert np.abs(ours - engine).max() < F32_TOLERANCE
    assert (ours.argmax(-1) == engine.argmax(-1)).all()


@needs_llama_cpp
def test_the_rope_layout_matters(tmp_path):
    """Without the Q/K permutation llama.cpp computes something else: the test above can fail."""
    import secateurs.export.gguf as exporter

    model = _peaky_llama()
    original = exporter._rope_permute
    exporter._rope_permute = lambda weight, heads: weight
    try:
        write_gguf(ModelAdapter(model), tmp_path / "unpermuted.gguf", _smollm2_gguf())
    finally:
        exporter._rope_permute = original
    assert np.abs(_torch_logprobs(model, TOKENS) - _engine_logprobs(tmp_path / "unpermuted.gguf", TOKENS)).max() > 0.05


def test_families_and_inputs_gguf_cannot_express_are_one_line(capsys, tmp_path, tiny_model_dir, data_dir):
    from conftest import tiny_model

    with pytest.raises(Exception, match="no q/k/v biases"):
        write_gguf(ModelAdapter(tiny_model("qwen2")), tmp_path / "q.gguf", _smollm2_gguf())
    with pytest.raises(Exception, match="sandwich norms"):
        write_gguf(ModelAdapter(tiny_model("gemma3_text")), tmp_path / "g.gguf", _smollm2_gguf())
    assert "was not written by `secateurs prune`" in _err(capsys, "export", str(tiny_model_dir), "--format", "gguf",
                                                          "--out", str(tmp_path / "x.gguf"))
    assert "unknown --gguf-type 'q2'" in _err(capsys, "export", str(tiny_model_dir), "--format", "gguf",
                                              "--gguf-type", "q2", "--out", str(tmp_path / "x.gguf"))
    assert "unknown --format 'onnx'" in _err(capsys, "export", str(tiny_model_dir), "--format", "onnx",
                                             "--out", str(tmp_path / "x"))
    (tmp_path / "exists.gguf").write_text("")
    out = tmp_path / "pruned"
    from secateurs.cli import main
    assert main(["--quiet", "prune", str(tiny_model_dir), "--blocks", "1", "--samples", "5", "--seqlen", "32",
                 "--eval-max-windows", "1", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    assert "already exists" in _err(capsys, "export", str(out), "--format", "gguf", "--out", str(tmp_path / "exists.gguf"))
    assert "needs the tokenizer of a source GGUF" in _err(capsys, "export", str(out), "--format", "gguf",
                                                          "--out", str(tmp_path / "y.gguf"))
    assert not (tmp_path / "y.gguf").exists()
    json.loads((out / "report.json").read_text())


@needs_llama_cpp
@pytest.mark.real_model
def test_smollm2_with_blocks_removed_in_several_places_runs_the_same_in_llama_cpp(tmp_path):
    from secateurs import load_model

    lm = load_model("smollm2-135m")
    removed = ["mha.0", "mlp.5", "mha.12", "mlp.12", "mha.29"]  # layer 0's attention, an MLP alone, a layer, the last
    adapter = ModelAdapter(lm.model)
    adapter.remove_blocks([Block.parse(n) for n in removed])
    write_gguf(adapter, tmp_path / "smollm2.gguf", _smollm2_gguf())
    tokens = lm.tokenizer("The capital of France is Paris, and the capital of Italy is", add_special_tokens=False)["input_ids"]
    ours, engine = _torch_logprobs(lm.model, tokens), _engine_logprobs(tmp_path / "smollm2.gguf", tokens)
    assert np.abs(ours - engine).max() < F32_TOLERANCE
    assert (ours.argmax(-1) == engine.argmax(-1)).all()


@needs_llama_cpp
@pytest.mark.real_model
@pytest.mark.parametrize("method", [
    ["--blocks", "2", "--samples", "1"],  # structured: blocks removed
    ["--method", "magnitude", "--sparsity", "0.5"],  # unstructured: the zeros are stored
])
def test_prune_with_format_gguf_writes_a_model_llama_cpp_serves(method, data_dir, tmp_path):
    from secateurs import load_pruned
    from secateurs.cli import main

    out = tmp_path / "pruned"
    assert main(["--quiet", "prune", "smollm2-135m", *method, "--seqlen", "32", "--eval-max-windows", "1",
                 "--data-dir", str(data_dir), "--format", "gguf", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["gguf"]["architecture"] == "deci" and (out / "model.gguf").is_file()
    lm = load_pruned(out)
    tokens = lm.tokenizer("Pruning keeps the model useful.", add_special_tokens=False)["input_ids"]
    assert np.abs(_torch_logprobs(lm.model, tokens) - _engine_logprobs(out / "model.gguf", tokens)).max() < F32_TOLERANCE


@needs_llama_cpp
@pytest.mark.parametrize("gguf_type,max_error,mean_error", [("f16", 0.05, 0.01), ("q8_0", 1.0, 0.1)])
def test_f16_and_q8_0_exports_load_and_stay_close(gguf_type, max_error, mean_error, tmp_path):
    """Rounding the weights moves the log-probabilities a little; wrong wiring would move them by nats."""
    model = _peaky_llama()
    adapter = ModelAdapter(model)
    adapter.remove_blocks([Block.parse("mha.0"), Block.parse("mlp.1")])
    write_gguf(adapter, tmp_path / "model.gguf", _smollm2_gguf(), gguf_type)
    error = np.abs(_torch_logprobs(model, TOKENS) - _engine_logprobs(tmp_path / "model.gguf", TOKENS))
    assert error.max() < max_error and error.mean() < mean_error, (error.max(), error.mean())
