"""Resumable runs: the state after each completed step, kept beside the output, to continue from.

A run with an output (``--out DIR``) keeps a checkpoint directory ``DIR.checkpoint`` beside it. Each
long stage of the run (a block search, the sequential pipeline, D-Pruner's general importance and its
domain epochs, a suite's evaluations) saves its state there after every completed step: JSON for
what is small, safetensors for tensors, each written atomically (a temporary, then a rename), the JSON
state last, so that a run killed at any point (SIGKILL, a reboot, a spot instance taken back) leaves
the state of its last completed step. Running the same command again continues from there and gives
the result an uninterrupted run gives (bit-identical: the tests kill runs and compare); ``--fresh``
discards the checkpoint. The checkpoint records the run's protocol (its recipe, the model's source
and the versions): a command that differs is refused, naming what differs. It is removed once the
output is written.

Several processes (torchrun) share one checkpoint directory: rank 0 writes what all ranks share, and
each rank its own share of a stage (``Stage.own``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import SecateursError
from .files import save_tensors_atomic, write_json_atomic
from .reporting.provenance import package_versions

CHECKPOINT_SUFFIX = ".checkpoint"
PROTOCOL_FILE = "protocol.json"
STATE_FILE = "state.json"
PROTOCOL_PACKAGES = ("secateurs", "torch", "transformers")  # a checkpoint resumes only under the same versions


def checkpoint_path(out: str | Path) -> Path:
    """Where the checkpoint of the run writing ``out`` lives: beside it."""
    out = Path(out)
    return out.with_name(out.name + CHECKPOINT_SUFFIX)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def first_difference(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The first setting (dotted name) whose value differs between two protocols, said as text."""
    a, b = _flat(saved), _flat(now)
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"{key} was {a.get(key)!r}, now {b.get(key)!r}"
    return None


@dataclass
class Stage:
    """One stage's saved state: ``state`` (JSON) and tensor files, under ``checkpoint/name``."""

    root: Path
    checkpoint: "Checkpoint"

    @property
    def state(self) -> dict[str, Any] | None:
        """The state of the last completed step, or None if the stage has not completed one."""
        file = self.root / STATE_FILE
        if self.checkpoint.fresh or not file.is_file():  # --fresh: no process resumes from an older state
            return None
        try:
            return json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise SecateursError(f"cannot read the checkpoint {file}: {exc}; run with --fresh to start over") from exc

    def save_state(self, state: dict[str, Any]) -> None:
        """Record a completed step: written last, after its tensors, so that it names only what exists."""
        if self.checkpoint.writer:
            self.checkpoint.begin()
            write_json_atomic(self.root / STATE_FILE, state)

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor], own: bool = False) -> None:
        """Tensors of a step (``own``: this process's share, one file per rank; else rank 0 writes them)."""
        if own or self.checkpoint.writer:
            self.checkpoint.begin()
            self.root.mkdir(parents=True, exist_ok=True)
            save_tensors_atomic(self.root / self._file(name, own), {k: v.detach().cpu() for k, v in tensors.items()}, {})

    def load_tensors(self, name: str, own: bool = False) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        file = self.root / self._file(name, own)
        try:
            return load_file(str(file))
        except Exception as exc:  # noqa: BLE001 - a missing or torn file: the checkpoint cannot be used
            raise SecateursError(f"cannot read the checkpoint {file}: {exc}; run with --fresh to start over") from exc

    @staticmethod
    def slot(name: str, step: int) -> str:
        """The name to save ``name`` under at step ``step``: two slots taken in turn, so that the tensors
        of a step in progress never replace those of the last completed one, which the state names."""
        return f"{name}.{step % 2}"

    def _file(self, name: str, own: bool) -> str:
        return f"{name}.rank{self.checkpoint.rank}.safetensors" if own else f"{name}.safetensors"


class Checkpoint:
    """The checkpoint directory of one run (see the module's docstring)."""

    def __init__(self, root: Path, protocol: dict[str, Any], writer: bool = True, rank: int = 0, fresh: bool = False):
        self.root, self.protocol, self.writer, self.rank, self.fresh = root, protocol, writer, rank, fresh

    @classmethod
    def open(cls, out: str | Path, protocol: dict[str, Any], fresh: bool = False, writer: bool = True,
             rank: int = 0) -> "Checkpoint":
        """The checkpoint of the run writing ``out``: the one there if its protocol is this run's (or
        a new one; ``fresh`` discards an old one first). A checkpoint of another command is refused.
        The versions of the packages that compute the results are added to ``protocol`` here."""
        versions = package_versions()
        protocol = {**protocol, "versions": {name: versions.get(name) for name in PROTOCOL_PACKAGES}}
        root = checkpoint_path(out)
        saved = root / PROTOCOL_FILE
        if writer and (fresh or (root.is_dir() and not saved.is_file())):
            _remove(root)  # --fresh; or what a removal cut short left (no protocol: nothing to resume)
        if saved.is_file() and not fresh:
            try:
                recorded = json.loads(saved.read_text())
            except (OSError, ValueError) as exc:
                raise SecateursError(f"cannot read the checkpoint {saved}: {exc}; run with --fresh to start over") from exc
            difference = first_difference(recorded, json.loads(json.dumps(protocol)))
            if difference:
                raise SecateursError(f"{root} holds a checkpoint of another run ({difference}): run the command "
                                     "that made it to resume it, or add --fresh to discard it")
        return cls(root, protocol, writer, rank, fresh)

    def begin(self) -> None:
        """Record the protocol, before the first saved step (a run that saves nothing leaves nothing)."""
        if not (self.root / PROTOCOL_FILE).is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.root / PROTOCOL_FILE, self.protocol)

    @property
    def found(self) -> list[str]:
        """The stages that hold completed steps (what a resumed run will not redo)."""
        return sorted(p.name for p in self.root.iterdir() if (p / STATE_FILE).is_file()) if self.root.is_dir() else []

    def stage(self, name: str) -> Stage:
        return Stage(self.root / name, self)

    def remove(self) -> None:
        """The output is written: the checkpoint is no longer needed."""
        if self.writer:
            _remove(self.root)


def _remove(root: Path) -> None:
    """Remove a checkpoint directory: first its protocol (so that a removal cut short leaves nothing a
    run would resume from), then the rest."""
    (root / PROTOCOL_FILE).unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)
