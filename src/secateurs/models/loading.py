"""Load a causal LM from a built-in alias, a GGUF file, a local directory or a Hugging Face id.

GGUF files are dequantised by transformers once, then cached as safetensors (keyed on the file's
sha256) so that later loads take a fraction of a second.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..compat import warn_if_untested
from ..errors import SecateursError
from .checkpoint import pruning_record, removed_blocks, restore_removed
from ..files import atomic_directory, sha256_file
from .builtin import BUILTIN_MODELS, builtin_gguf, cache_root
from ..resources import device_of, dtype_of

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model, its tokenizer, and where they came from (recorded in every result file)."""

    model: Any
    tokenizer: Any
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return device_of(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return dtype_of(self.model)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SecateursError(f"device '{device}' requested but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise SecateursError(f"unknown device '{device}' (use auto, cpu or cuda[:N])") from exc


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` means float32 on CPU and bfloat16 on a GPU."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise SecateursError(f"unknown dtype '{dtype}'; choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _from_pretrained(path_or_id: str, what: str, **kwargs: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Load model, tokenizer and transformers' loading info; any failure becomes one SecateursError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, gguf_file=kwargs.get("gguf_file"))
        model, info = AutoModelForCausalLM.from_pretrained(path_or_id, output_loading_info=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - arbitrary files raise anything (SafetensorError, struct.error, ...)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SecateursError(f"could not load {what}: {first_line}") from exc
    model.eval()
    return model, tokenizer, info


def _dequantised_cache(gguf: Path, digest: str) -> Path:
    """Dequantise ``gguf`` once into a safetensors directory under the cache; return that directory."""
    target = cache_root() / "models" / f"gguf-{digest[:16]}"
    if (target / "config.json").is_file():
        return target
    log.info("dequantising %s (first load only; cached in %s)", gguf.name, target)
    model, tokenizer, _ = _from_pretrained(
        str(gguf.parent), f"GGUF file {gguf}", gguf_file=gguf.name, dtype=torch.float32
    )
    # transformers marks GGUF-loaded models as quantised; the dequantised weights are plain floats.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if target.exists():  # a cache entry left incomplete by an older version
        shutil.rmtree(target)
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def _load_gguf(path: Path, dtype: torch.dtype, device: torch.device, source: dict) -> LoadedModel:
    if not path.is_file():
        raise SecateursError(f"GGUF file not found: {path}")
    digest = source.get("sha256") or sha256_file(path)
    cached = _dequantised_cache(path, digest)
    model, tokenizer, _ = _from_pretrained(str(cached), f"cached model {cached}", dtype=dtype)
    source.update(kind="gguf", gguf=str(path), sha256=digest, cache=str(cached))
    return LoadedModel(model.to(device), tokenizer, source)


def _load_directory(path: Path, dtype: torch.dtype, device: torch.device, source: dict) -> LoadedModel:
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _load_gguf(ggufs[0], dtype, device, source)
        raise SecateursError(
            f"{path} is not a model directory: it has no config.json"
            + (f" and {len(ggufs)} GGUF files (name one)" if ggufs else "")
        )
    pruning = pruning_record(path)
    removed = removed_blocks(pruning)
    if not removed:
        model, tokenizer, _ = _from_pretrained(str(path), f"model directory {path}", dtype=dtype)
        source.update(kind="directory", path=str(path), pruning=pruning or None)
        return LoadedModel(model.to(device), tokenizer, source)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers would warn about the removed blocks' absent weights
    try:
        model, tokenizer, info = _from_pretrained(str(path), f"pruned model directory {path}", dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
    restore_removed(model, removed, info.get("missing_keys", []), path)
    source.update(kind="pruned-directory", path=str(path), pruning=pruning)
    return LoadedModel(model.to(device), tokenizer, source)


def load_pruned(path: str | os.PathLike, dtype: str = "auto", device: str = "auto") -> LoadedModel:
    """Reload a directory written by ``secateurs prune`` (any method)."""
    if not Path(path).is_dir():
        raise SecateursError(f"pruned model directory not found: {path}")
    return load_model(str(path), dtype=dtype, device=device)


def load_model(spec: str, dtype: str = "auto", device: str = "auto") -> LoadedModel:
    """Load ``spec``: a built-in alias, a ``.gguf`` file, a local directory or an ``org/name`` hub id."""
    warn_if_untested()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    source: dict[str, Any] = {"spec": spec}
    if spec in BUILTIN_MODELS:
        entry, path = builtin_gguf(spec)
        source.update(alias=spec, requirement=entry.requirement, note=entry.note, sha256=entry.sha256)
        return _load_gguf(path, torch_dtype, dev, source)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_directory(path, torch_dtype, dev, source)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise SecateursError(f"{path} is a file but not a .gguf model; pass a GGUF file or a model directory")
        return _load_gguf(path, torch_dtype, dev, source)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or os.sep in spec.strip("/")
    if _HUB_ID.match(spec) and not path.parent.is_dir():
        model, tokenizer, _ = _from_pretrained(spec, f"'{spec}' from the Hugging Face hub or its local cache", dtype=torch_dtype)
        source.update(kind="hub")
        return LoadedModel(model.to(dev), tokenizer, source)
    close = difflib.get_close_matches(spec, list(BUILTIN_MODELS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    if looks_like_path:
        raise SecateursError(f"model path not found: {spec}")
    raise SecateursError(
        f"unknown model '{spec}'{hint}: not a built-in alias ({', '.join(BUILTIN_MODELS)}), "
        "not an existing path, and not a Hugging Face id of the form org/name"
    )
