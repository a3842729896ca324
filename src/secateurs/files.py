"""Small file helpers: hashing, and writing outputs atomically (temporary path, then rename)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import signal
import socket
import threading
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
    here = Path.cwd().resolve()
    if path.absolute().name in ("", ".", "..") or path.resolve() in (here, *here.parents):
        raise SecateursError(f"cannot write to {path}: name a new file or directory for the output (an output "
                             "replaces what is there, and the current or a parent directory cannot be replaced)")
    if path.is_symlink() and not path.exists():
        raise SecateursError(f"output {path} is a symbolic link to {os.readlink(path)}, which does not exist; "
                             "remove the link or name another path")
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


def _host() -> str:
    return socket.gethostname().replace(".", "-") or "host"


def _temporary_prefix(path: Path) -> str:
    """Temporaries of ``path`` are ``.<name>.<host>.<pid>.*.tmp``: host and pid tell whether their writer runs."""
    return f".{path.name}.{_host()}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove temporaries of ``path`` that writers on this host left behind (killed, power loss).

    Only exact matches of our own naming, and only this host's (another machine on a shared filesystem
    may be writing), and only where that process no longer runs.
    """
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(_host())}\.(\d+)\.[A-Za-z0-9_]+(\.old)?\.tmp$")
    removed = []
    for entry in path.parent.iterdir() if path.parent.is_dir() else []:
        match = pattern.match(entry.name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


WORK_PREFIX = "secateurs-"  # work directories: secateurs-<kind>-<host>.<pid>.<random>


def work_directory(kind: str, parent: str | os.PathLike | None = None) -> Path:
    """A new private directory for a run's work (offloaded weights or activations) in ``parent`` (default:
    the system's temporary directory), named after this host and process; work directories that processes
    of this host left behind (killed, rebooted) and that no longer run are removed first."""
    root = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    try:
        remove_stale_work(root)
        return Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{kind}-{_host()}.{os.getpid()}.", dir=root))
    except OSError as exc:
        raise SecateursError(f"cannot create an offload directory in {root}: {exc.strerror or exc}") from exc


def remove_stale_work(root: Path) -> list[Path]:
    """Remove the work directories in ``root`` whose process, on this host, no longer runs."""
    pattern = re.compile(rf"^{re.escape(WORK_PREFIX)}[a-z]+-{re.escape(_host())}\.(\d+)\.[A-Za-z0-9_]+$")
    removed = []
    for entry in root.iterdir() if root.is_dir() else []:
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


NO_LOCKING = {errno.EBADF, errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}  # e.g. NFS, some Lustre


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` (flock on its descriptor) for the replace of an output in it.

    Where the filesystem cannot lock a directory (NFS turns flock into fcntl locks), the replace goes
    ahead unlocked: as safe as a plain rename, only concurrent writers of one path are not serialised.
    """
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in NO_LOCKING:
                raise
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (the two renames of a replace are not torn apart)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _write_error(path: Path, exc: BaseException) -> SecateursError:
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else lines[0]
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) or "StorageFull" in str(exc):
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
        old = tmp.with_name(tmp.name[:-len(".tmp")] + ".old.tmp")
        with _locked(path.parent), _signals_held():
            check_output_path(path, overwrite)  # another writer may have created it meanwhile
            try:
                if path.exists() or path.is_symlink():
                    os.replace(path, old)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    if os.path.lexists(old) and not os.path.lexists(path):
                        os.replace(old, path)  # put the previous output back
                    raise
            except OSError as exc:
                raise _write_error(path, exc) from exc
        _remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove(path: Path) -> None:
    """Remove what an output replaced: a directory tree, a file or a link (nothing if it is gone)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


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
        remove_stale_temporaries(path)
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
