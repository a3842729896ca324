"""What produced a number: package versions and the machine, recorded in every result file."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Any

import torch

_PACKAGES = ("secateurs", "torch", "transformers", "tokenizers", "safetensors", "gguf", "accelerate", "numpy")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict[str, Any]:
    return {
        "versions": package_versions(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
