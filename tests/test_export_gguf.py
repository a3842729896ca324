"""GGUF export, proven in llama.cpp (through llama-cpp-python): the engine computes what secateurs computes."""

import json

import numpy as np
import pytest
import torch

from conftest import cli_error as _err, make_bpe_tokenizer, peaky_model, tiny_model
from secateurs import Block, ModelAdapter, SecateursError
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


def _torch_logprobs(model, tokens):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([tokens])).logits[0].float(), -1).numpy()


SMOLLM2_VOCAB = 49152  # the tiny models take SmolLM2's vocabulary, so that its GGUF tokenizer fits them


def _engine_logprobs(path, tokens):
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, n_threads=2, verbose=False,
                          type_k=F32_CACHE, type_v=F32_CACHE)  # llama.cpp keeps K and V in float16 by default
    llm.eval(tokens)
    logits = np.array(llm.scores[:len(tokens)], dtype=np.float64)
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


TOKENS = [1, 504, 3458, 282, 260, 1345, 30, 2, 7041, 314, 9856, 17, 400, 1281, 42, 88]


@needs_llama_cpp
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])  # qwen2: q/k/v biases, permuted with their rows
@pytest.mark.parametrize("removed", [
    [],  # dense
    ["mha.0"],  # layer 0's attention: written as a zero attention (llama.cpp cannot load it absent)
    ["mlp.1"],  # an MLP whose attention stays: a zero MLP keeps llama.cpp's residual add
    ["mha.2", "mlp.2"],  # a whole layer: left out
    ["mha.3"],  # the last layer's attention
    ["mha.0", "mlp.0", "mha.1", "mlp.3"],  # several at once, the first written layer without attention
])
def test_llama_cpp_computes_what_secateurs_computes(family, removed, tmp_path):
    model = peaky_model(family, vocab_size=SMOLLM2_VOCAB)
    adapter = ModelAdapter(model)
    adapter.remove_blocks([Block.parse(n) for n in removed])
    record = write_gguf(adapter, tmp_path / "model.gguf", _smollm2_gguf())
    assert record["layers"] == 4 - sum(1 for i in range(4) if {f"mha.{i}", f"mlp.{i}"} <= set(removed))
    ours, engine = _torch_logprobs(model, TOKENS), _engine_logprobs(tmp_path / "model.gguf", TOKENS)
    assert np.abs(ours - engine).max() < F32_TOLERANCE
    assert (ours.argmax(-1) == engine.argmax(-1)).all()


@needs_llama_cpp
def _small_bpe_tokenizer():
    """A byte-level BPE with merges learnt from a few sentences (the tests' byte tokenizer has none)."""
    return make_bpe_tokenizer(300, ["The capital of France is Paris.", "Pruning keeps 42 models useful and fast."])


@needs_llama_cpp
def test_a_model_without_a_source_gguf_gets_a_tokenizer_built_from_its_hugging_face_one(tmp_path):
    """A byte-level BPE tokenizer: llama.cpp tokenises as it does and computes the same log-probs."""
    model, tokenizer = peaky_model("llama", vocab_size=300), _small_bpe_tokenizer()
    assert len(tokenizer) == 300
    adapter = ModelAdapter(model)
    adapter.remove_blocks([Block.parse("mha.0"), Block.parse("mlp.2")])
    record = write_gguf(adapter, tmp_path / "model.gguf", None, tokenizer=tokenizer)
    assert record["tokenizer"] == "built from the Hugging Face tokenizer (gpt-2)"
    llm = llama_cpp.Llama(model_path=str(tmp_path / "model.gguf"), vocab_only=True, verbose=False)
    for text in ["Pruning keeps 42 models useful.", "  two spaces, ünïcode and\nnew lines"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = tokenizer("The capital of France is Paris.", add_special_tokens=False)["input_ids"]
    assert np.abs(_torch_logprobs(model, tokens) - _engine_logprobs(tmp_path / "model.gguf", tokens)).max() < F32_TOLERANCE


@needs_llama_cpp
@pytest.mark.real_model
def test_smollm2_tokenizer_rebuilt_from_hugging_face_equals_its_gguf_and_tokenises_the_same(tmp_path):
    import gguf

    from secateurs import load_model
    from secateurs.export.gguf_tokenizer import from_hf_tokenizer

    lm = load_model("smollm2-135m")
    built = from_hf_tokenizer(lm.tokenizer, SMOLLM2_VOCAB)
    fields = gguf.GGUFReader(str(_smollm2_gguf())).fields
    assert built.tokens == fields["tokenizer.ggml.tokens"].contents()
    assert built.token_types == fields["tokenizer.ggml.token_type"].contents()
    assert built.merges == fields["tokenizer.ggml.merges"].contents()
    assert built.special_ids == {"bos": 1, "eos": 2, "unk": 0, "pad": 2}
    # transformers' GGUF loader gives SmolLM2 a plain byte-level pre-tokenizer (its digit split is lost), so
    # the rebuilt GGUF says gpt-2, not the source's smollm: it tokenises as the Hugging Face tokenizer does.
    assert built.pre == "gpt-2"
    model = peaky_model("llama", vocab_size=SMOLLM2_VOCAB)
    write_gguf(ModelAdapter(model), tmp_path / "model.gguf", None, tokenizer=lm.tokenizer)
    llm = llama_cpp.Llama(model_path=str(tmp_path / "model.gguf"), vocab_only=True, verbose=False)
    for text in ["The capital of France is Paris, and the capital of Italy is", "x = [1, 22, 333]\n\tprint(x)  # ok"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == lm.tokenizer(text, add_special_tokens=False)["input_ids"]


@needs_llama_cpp
def test_the_rope_layout_matters(tmp_path):
    """Without the Q/K permutation llama.cpp computes something else: the test above can fail."""
    import secateurs.export.gguf as exporter

    model = peaky_model("llama", vocab_size=SMOLLM2_VOCAB)
    original = exporter._rope_permute
    exporter._rope_permute = lambda weight, heads: weight
    try:
        write_gguf(ModelAdapter(model), tmp_path / "unpermuted.gguf", _smollm2_gguf())
    finally:
        exporter._rope_permute = original
    assert np.abs(_torch_logprobs(model, TOKENS) - _engine_logprobs(tmp_path / "unpermuted.gguf", TOKENS)).max() > 0.05


def test_families_and_inputs_gguf_cannot_express_are_one_line(capsys, tmp_path, tiny_model_dir, data_dir):
    with pytest.raises(SecateursError, match="llama.cpp's deci architecture has no sandwich norms"):
        write_gguf(ModelAdapter(tiny_model("gemma3_text")), tmp_path / "g.gguf", _smollm2_gguf())
    with pytest.raises(SecateursError, match="sliding window of 64 tokens"):
        write_gguf(ModelAdapter(peaky_model("mistral", sliding_window=64)), tmp_path / "m.gguf", _smollm2_gguf())
    assert not list(tmp_path.glob("*.gguf"))
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
    unknown_pre = out / "tokenizer.json"  # a tokenizer whose pre-tokenizer llama.cpp does not know is refused
    spec = json.loads(unknown_pre.read_text())
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    unknown_pre.write_text(json.dumps(spec))
    assert "llama.cpp knows no pre-tokenizer matching" in _err(capsys, "export", str(out), "--format", "gguf",
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
    assert report["engine_export"]["architecture"] == "deci" and (out / "model.gguf").is_file()
    lm = load_pruned(out)
    tokens = lm.tokenizer("Pruning keeps the model useful.", add_special_tokens=False)["input_ids"]
    assert np.abs(_torch_logprobs(lm.model, tokens) - _engine_logprobs(out / "model.gguf", tokens)).max() < F32_TOLERANCE


@needs_llama_cpp
@pytest.mark.parametrize("gguf_type,max_error,mean_error", [("f16", 0.05, 0.01), ("q8_0", 1.0, 0.1)])
def test_f16_and_q8_0_exports_load_and_stay_close(gguf_type, max_error, mean_error, tmp_path):
    """Rounding the weights moves the log-probabilities a little; wrong wiring would move them by nats."""
    model = peaky_model("llama", vocab_size=SMOLLM2_VOCAB)
    adapter = ModelAdapter(model)
    adapter.remove_blocks([Block.parse("mha.0"), Block.parse("mlp.1")])
    write_gguf(adapter, tmp_path / "model.gguf", _smollm2_gguf(), gguf_type)
    error = np.abs(_torch_logprobs(model, TOKENS) - _engine_logprobs(tmp_path / "model.gguf", TOKENS))
    assert error.max() < max_error and error.mean() < mean_error, (error.max(), error.mean())
