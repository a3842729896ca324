import pytest
import torch

from secateurs import SecateursError, load_model
from secateurs.models import builtin as zoo


def test_local_directory_loads_with_dtype(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu")
    assert loaded.dtype == torch.bfloat16 and loaded.source["kind"] == "directory"
    assert load_model(str(tiny_model_dir)).dtype == torch.float32  # auto = the checkpoint's (float32 here)


def test_auto_dtype_keeps_a_bfloat16_checkpoint_in_bfloat16(tiny_model_dir, tmp_path):
    loaded = load_model(str(tiny_model_dir), dtype="bfloat16")
    loaded.model.save_pretrained(tmp_path / "bf16")
    loaded.tokenizer.save_pretrained(tmp_path / "bf16")
    again = load_model(str(tmp_path / "bf16"))
    assert again.dtype == torch.bfloat16  # not widened to float32 (twice the memory)
    assert load_model(str(tmp_path / "bf16"), dtype="float32").dtype == torch.float32  # unless asked


def test_unknown_model_suggests_the_alias():
    with pytest.raises(SecateursError, match=r"unknown model 'smollm2-135'.*did you mean 'smollm2-135m'"):
        load_model("smollm2-135")


@pytest.mark.parametrize("spec", ["./no/such/dir", "/tmp/definitely-missing-model.gguf"])
def test_missing_paths(spec):
    with pytest.raises(SecateursError, match="model path not found"):
        load_model(spec)


def test_corrupt_files_get_clear_errors(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("SECATEURS_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF" + b"\x00garbage" * 100)
    with pytest.raises(SecateursError, match="could not load GGUF file"):
        load_model(str(gguf))
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())
    (tiny_model_dir / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SecateursError, match="could not load model directory"):
        load_model(str(tiny_model_dir))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(SecateursError, match="not a .gguf model"):
        load_model(str(other))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SecateursError, match="has no config.json"):
        load_model(str(empty))


def test_bad_dtype_and_device(tiny_model_dir):
    with pytest.raises(SecateursError, match="unknown dtype 'float8'"):
        load_model(str(tiny_model_dir), dtype="float8")
    with pytest.raises(SecateursError, match="unknown device"):
        load_model(str(tiny_model_dir), device="tpu")


def test_builtin_checksum_is_verified(monkeypatch):
    entry = zoo.BUILTIN_MODELS["smollm2-135m"]
    monkeypatch.setitem(zoo.BUILTIN_MODELS, "smollm2-135m", zoo.BuiltinModel(**{**entry.__dict__, "sha256": "0" * 64}))
    with pytest.raises(SecateursError, match="corrupt or from another release"):
        load_model("smollm2-135m")
