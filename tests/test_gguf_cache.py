"""The GGUF cache, written one tensor at a time (models/gguf_cache.py), holds what transformers' loading
of the whole model saves: the same files and the same tensors, bit for bit."""

import contextlib
import filecmp

import gguf
import pytest
import torch
from safetensors import safe_open

from conftest import make_byte_tokenizer, tiny_model
from secateurs import ModelAdapter, SecateursError
from secateurs.export.gguf_tokenizer import GGUFTokenizer
from secateurs.models import gguf_cache, loading
from secateurs.models.builtin import builtin_gguf
from secateurs.models.gguf_cache import plan_dequantisation
from secateurs.models.loading import _dequantised_cache, _whole_model_cache, load_model
from secateurs.models.streaming import INDEX_FILE, checkpoint_files

GGUF_ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
                      "gemma3_text": gguf.MODEL_ARCH.GEMMA3}
SAVED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def _tiny_gguf(family, path, tie=False):
    """A tiny random model of ``family`` as a GGUF file: matrices in Q4_1, the embeddings in Q8_0, the
    norms and biases in F32, and a byte-level tokenizer with one merge (260 tokens)."""
    model, tokenizer = tiny_model(family, tie=tie), make_byte_tokenizer()
    config, architecture = model.config, GGUF_ARCHITECTURES[family]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    names = gguf.get_tensor_name_map(architecture, config.num_hidden_layers)
    with contextlib.closing(gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[architecture])) as writer:
        writer.add_name(f"tiny {family}")
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_freq_base(ModelAdapter(model).dimensions().rope_theta)
        if family == "gemma3_text":
            writer.add_sliding_window(config.sliding_window)
        tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])] + ["ab"]
        GGUFTokenizer("gpt2", tokens, [3, 3, 3] + [1] * (len(tokens) - 3), ["a b"], {"bos": 1, "eos": 2, "unk": 0},
                      True, None).write(writer)
        for name, weight in model.state_dict().items():
            if tie and name == "lm_head.weight":
                continue
            data = weight.detach().float().numpy()
            kind = (gguf.GGMLQuantizationType.F32 if data.ndim == 1 else gguf.GGMLQuantizationType.Q8_0
                    if "embed" in name else gguf.GGMLQuantizationType.Q4_1)
            module, suffix = name.rsplit(".", 1)
            writer.add_tensor(f"{names.get_name(module)}.{suffix}", gguf.quants.quantize(data, kind), raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    return path


def _assert_same_checkpoint(expected, written):
    """Same weight names, dtypes, shapes and bits; the same config, generation config and tokenizer files."""
    expected_files, written_files = checkpoint_files(expected), checkpoint_files(written)
    assert sorted(written_files) == sorted(expected_files)
    for name in expected_files:
        with safe_open(expected_files[name], "pt") as a, safe_open(written_files[name], "pt") as b:
            x, y = a.get_tensor(name), b.get_tensor(name)
        assert (y.dtype, y.shape) == (x.dtype, x.shape), name
        assert torch.equal(y.view(torch.uint8), x.view(torch.uint8)), f"{name} differs"
    for file in SAVED_FILES:
        assert filecmp.cmp(expected / file, written / file, shallow=False), file


@pytest.mark.parametrize("family, tie", [("llama", True), ("qwen2", False), ("gemma3_text", False)])
def test_tensor_by_tensor_equals_transformers_whole_model(family, tie, tmp_path, monkeypatch):
    """Llama (reverse rope permutation of Q and K, tied head), Qwen2 (biases), Gemma 3 (norms stored as w+1)."""
    monkeypatch.setattr(gguf_cache, "CHUNK_BYTES", 1000)  # each matrix dequantised in several runs of rows
    path = _tiny_gguf(family, tmp_path / "tiny.gguf", tie)
    whole = _whole_model_cache(path, tmp_path / "whole")
    written = tmp_path / "written"
    written.mkdir()
    plan_dequantisation(path).write(written, shard_bytes=20_000)  # several shards, and their index
    assert len(list(written.glob("*.safetensors"))) > 1 and (written / INDEX_FILE).is_file()
    _assert_same_checkpoint(whole, written)


def test_the_first_load_writes_the_cache_tensor_by_tensor(tmp_path, monkeypatch):
    monkeypatch.setenv("SECATEURS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loading, "_whole_model_cache", lambda *args: pytest.fail("transformers loaded it whole"))
    path = _tiny_gguf("qwen2", tmp_path / "tiny.gguf")
    first = load_model(str(path), dtype="float32")
    assert first.source["cache"].startswith(str(tmp_path / "cache"))
    again = load_model(str(path), dtype="float32")  # from the cache
    for (name, a), (_, b) in zip(first.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_an_architecture_it_cannot_write_so_is_loaded_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("SECATEURS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loading, "plan_dequantisation", lambda path: None)
    path = _tiny_gguf("llama", tmp_path / "tiny.gguf")
    assert load_model(str(path), dtype="float32").source["kind"] == "gguf"


def test_a_weight_of_the_wrong_shape_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SECATEURS_CACHE", str(tmp_path / "cache"))
    path = _tiny_gguf("llama", tmp_path / "tiny.gguf")
    plan = plan_dequantisation(path)
    name, tensor = plan.tensors[0]
    plan.tensors[0] = (name, plan.tensors[1][1])  # another tensor's data under this weight's name
    monkeypatch.setattr(loading, "plan_dequantisation", lambda path: plan)
    with pytest.raises(SecateursError, match=f"could not load GGUF file .*{name}"):
        load_model(str(path))
    assert not list((tmp_path / "cache" / "models").iterdir())  # neither the entry nor its temporary


@pytest.mark.real_model
def test_smollm2_cache_equals_transformers_whole_model(tmp_path, monkeypatch):
    monkeypatch.setenv("SECATEURS_CACHE", str(tmp_path / "cache"))
    entry, path = builtin_gguf("smollm2-135m")  # Q4_1, tied embeddings
    written = _dequantised_cache(path, entry.sha256)
    _assert_same_checkpoint(_whole_model_cache(path, tmp_path / "whole"), written)
