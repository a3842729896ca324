"""Tensors offloaded to disk come back exactly; a bad place is one clear error; nothing is left behind."""

import pytest
import torch

from secateurs import SecateursError
from secateurs.offload import DiskTensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_tensors_come_back_exactly(tmp_path, dtype):
    tensors = {"a": torch.randn(3, 5).to(dtype), "b": torch.randn(7).to(dtype), "empty": torch.zeros(0, 4, dtype=dtype)}
    with DiskTensors(tmp_path) as store:
        for name, t in tensors.items():
            store.put(name, t)
        assert "a" in store and "c" not in store
        for name, t in tensors.items():
            back = store.get(name)
            assert back.dtype == dtype and torch.equal(back, t)
        assert store.nbytes() == sum(t.numel() * t.element_size() for t in tensors.values())
    assert not list(tmp_path.iterdir())


def test_a_file_instead_of_a_directory_is_one_clear_error(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SecateursError, match="cannot create an offload directory in .*a-file"):
        DiskTensors(tmp_path / "a-file")


def test_missing_directory_is_one_clear_error(tmp_path):
    with pytest.raises(SecateursError, match="cannot create an offload directory in .*missing"):
        DiskTensors(tmp_path / "missing")


def test_full_disk_is_one_clear_error(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 10, 0))
    with DiskTensors(tmp_path) as store, pytest.raises(SecateursError, match="not enough space"):
        store.put("a", torch.ones(1000))
    assert not list(tmp_path.iterdir())
