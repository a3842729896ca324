"""Small file helpers: hashing, and writing outputs atomically (temporary path, then rename)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
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
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_output_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse, before any work, an output that exists (without ``overwrite``) or cannot be written."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise SecateursError(f"output {path} already exists; pass --overwrite to replace it")
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SecateursError(f"cannot write {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SecateursError(f"cannot write {path}: {ancestor} is not writable")
    return path


FREE_SPACE_MARGIN = 1.1  # tokenizer, reports, figures and filesystem slack on top of the weights


def check_free_space(path: str | os.PathLike, needed_bytes: int) -> None:
    """Refuse to start writing ``needed_bytes`` (times a margin) where the filesystem has less free."""
    ancestor = Path(path).absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    free = shutil.disk_usage(ancestor).free
    if free < needed_bytes * FREE_SPACE_MARGIN:
        raise SecateursError(f"not enough space for {path}: about {needed_bytes * FREE_SPACE_MARGIN / 2**20:,.0f} MiB "
                             f"needed, {free / 2**20:,.0f} MiB free on {ancestor}")


def _temporary_prefix(path: Path, pid: int | None = None) -> str:
    """Temporaries of ``path`` are ``.<name>.<pid>.*.tmp``: the pid tells whether their writer still runs."""
    return f".{path.name}.{os.getpid() if pid is None else pid}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove temporaries of ``path`` left by writers that no longer run (killed, power loss)."""
    removed = []
    for entry in path.parent.glob(f".{path.name}.*.tmp"):
        pid = entry.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` (flock on its descriptor) for the replace of an output in it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_error(path: Path, exc: BaseException) -> SecateursError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "StorageFull" in str(exc):
        reason = "no space left on the device"
    return SecateursError(f"could not write {path}: {reason}")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``.

    If the body raises (or is interrupted, SIGTERM included), the temporary directory is removed and
    ``path`` is left as it was, so a reader never sees a half-written output. Temporaries that killed
    writers left behind are removed first; concurrent writers of the same path replace it one at a time.
    A write error (full disk, read-only place) becomes one SecateursError.
    """
    from safetensors import SafetensorError

    path = check_output_path(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        try:
            yield tmp
            # Some writers (safetensors among them) create files private; give everything plain modes.
            for entry in [tmp, *tmp.rglob("*")]:
                _public_mode(entry, directory=entry.is_dir())
        except (OSError, SafetensorError) as exc:
            raise _write_error(path, exc) from exc
        with _locked(path.parent):
            check_output_path(path, overwrite)  # another writer may have created it meanwhile
            old = tmp.with_name(tmp.name[:-len(".tmp")] + ".old.tmp")
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class Artifact:
    """Tensors a method produces beside the model (D-Pruner's general importance), saved on export as
    safetensors with their metadata (plus the model they belong to)."""

    name: str  # file name inside the output directory
    tensors: dict[str, Any]
    metadata: dict[str, str]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``, else it is removed.

    Write errors (full disk, read-only place) become one SecateursError.
    """
    path = check_output_path(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    tmp = Path(name)
    try:
        yield tmp
        _public_mode(tmp, directory=False)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise


def save_tensors_atomic(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """Save tensors as safetensors through a temporary file in the same folder, then rename."""
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
