"""Small file helpers: hashing, and writing outputs atomically (temporary path, then rename)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import SecateursError

_HASH_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _public_mode(path: Path, directory: bool) -> None:
    """Give a file or directory the mode a plain ``open`` / ``mkdir`` would have under the umask.

    ``mkstemp`` / ``mkdtemp`` (and some libraries' writers) create them private (0600 / 0700), and a
    rename keeps the mode, so without this a serving process running as another user could not read
    what we wrote.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _public_mode(Path(tmp), directory=False)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_output_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to replace an existing output unless ``overwrite`` is set."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise SecateursError(f"output {path} already exists; pass --overwrite to replace it")
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``.

    If the body raises (or is interrupted), the temporary directory is removed and ``path`` is left
    as it was, so a reader never sees a half-written output.
    """
    path = check_output_path(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        # Some writers (safetensors among them) create files private; give everything plain modes.
        for entry in [tmp, *tmp.rglob("*")]:
            _public_mode(entry, directory=entry.is_dir())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


@dataclass
class Artifact:
    """Tensors a method produces beside the model (D-Pruner's general importance), saved on export as
    safetensors with their metadata (plus the model they belong to)."""

    name: str  # file name inside the output directory
    tensors: dict[str, Any]
    metadata: dict[str, str]


def save_tensors_atomic(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """Save tensors as safetensors through a temporary file in the same folder, then rename."""
    from safetensors.torch import save_file

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        _public_mode(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
