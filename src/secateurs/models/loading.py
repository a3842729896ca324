"""Load a causal LM from a built-in alias, a GGUF file, a local directory or a Hugging Face id.

GGUF files are dequantised once, tensor by tensor (models/gguf_cache.py), then cached as safetensors
(keyed on the file's sha256) so that later loads take a fraction of a second.
"""

from __future__ import annotations

import difflib
import json
import socket
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..compat import warn_if_untested
from ..errors import SecateursError
from .checkpoint import pruning_record, removed_blocks, restore_removed
from .streaming import load_streamed
from .gguf_cache import plan_dequantisation
from ..files import atomic_directory, sha256_file
from .builtin import BUILTIN_MODELS, builtin_gguf, cache_root
from ..resources import all_finite, device_of, dtype_of

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model, its tokenizer, and where they came from (recorded in every result file)."""

    model: Any
    tokenizer: Any
    source: dict[str, Any] = field(default_factory=dict)
    weights: Any = None  # StreamedWeights when the weights stay in their files (load_model_streamed)

    @property
    def device(self) -> torch.device:
        return self.weights.device if self.weights is not None else device_of(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return dtype_of(self.model)


DEVICE_TYPES = ("cpu", "cuda")  # what the pipelines are tested on


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise SecateursError(f"unknown device '{device}' (use auto, cpu or cuda[:N])") from exc
    if chosen.type not in DEVICE_TYPES:
        raise SecateursError(f"device '{device}' is not supported (use auto, cpu or cuda[:N])")
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise SecateursError(f"device '{device}' requested but no CUDA device is available")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise SecateursError(f"device '{device}' does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return chosen


def resolve_dtype(dtype: str) -> torch.dtype | str:
    """A torch dtype, or ``auto``: the checkpoint's own (a bfloat16 model stays bfloat16; a GGUF file's
    dequantised weights are float32)."""
    if dtype == "auto":
        return "auto"
    if dtype not in DTYPES:
        raise SecateursError(f"unknown dtype '{dtype}'; choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


HUB_KERNELS_ENV = "SECATEURS_HUB_KERNELS"  # 1: let transformers swap layers for kernels from the hub


def hub_kernels() -> bool:
    """Whether transformers may replace layers with compiled kernels downloaded from the hub (off unless
    the user opts in with ``SECATEURS_HUB_KERNELS=1``): that is code from the network, and other
    numerics than the ones the methods were validated with."""
    return os.environ.get(HUB_KERNELS_ENV, "").lower() in ("1", "true", "yes", "on")


def _reason(exc: Exception) -> str:
    """The part of an exception's message that says what is wrong, on one line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    reason = lines[0]
    for line in lines[1:3]:  # a first line that ends in ':' goes on in the next ones ("one of: ...")
        if not reason.endswith(":"):
            break
        reason = f"{reason} {line}"
    return reason


def _from_pretrained(path_or_id: str, what: str, **kwargs: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Load model, tokenizer and transformers' loading info; any failure becomes one SecateursError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = {"local_files_only": True} if kwargs.pop("offline", False) else {}
    if "gguf_file" not in kwargs:
        kwargs["use_safetensors"] = True  # never unpickle weights: a pickle can run code when it loads
    try:  # never run code shipped with a model (auto_map): trust_remote_code is always False
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, gguf_file=kwargs.get("gguf_file"),
                                                  trust_remote_code=False, **local)
        model, info = AutoModelForCausalLM.from_pretrained(path_or_id, output_loading_info=True,
                                                           trust_remote_code=False, use_kernels=hub_kernels(),
                                                           **local, **kwargs)
        if kwargs.get("dtype") == "auto" and dtype_of(model) not in DTYPES.values():
            model = model.float()  # an integer or exotic checkpoint dtype: compute in float32
    except Exception as exc:  # noqa: BLE001 - arbitrary files raise anything (SafetensorError, struct.error, ...)
        reason = _reason(exc)
        if "ignore_mismatched_sizes" in reason and Path(path_or_id).is_dir():
            reason = shape_mismatch(Path(path_or_id)) or reason
        raise SecateursError(f"could not load {what}: {reason}") from exc
    model.eval()
    check_finite(model, what)
    return model, tokenizer, info


def shape_mismatch(directory: Path) -> str | None:
    """The first weight whose shape in ``directory``'s safetensors files differs from what its config.json
    builds (the model built on the meta device, no memory); None if every shape agrees."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(str(directory), trust_remote_code=False)).state_dict().items()}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                shape = tuple(handle.get_slice(name).get_shape())
                if name in expected and expected[name] != shape:
                    return (f"weight {name} has shape {list(shape)} in {file.name}, but config.json makes it "
                            f"{list(expected[name])} (does config.json belong to these weights?)")
    return None


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def _check_directory_files(path: Path) -> None:
    """Weights as safetensors, and a tokenizer: said in one line before transformers is asked to load."""
    if not list(path.glob("*.safetensors")):
        pickles = sorted(p.name for pattern in PICKLED_WEIGHTS for p in path.glob(pattern))
        if pickles:
            raise SecateursError(f"{path} holds its weights as pickles ({pickles[0]}); secateurs loads only "
                                 "safetensors weights, since unpickling can run code: convert them first "
                                 "(load and save_pretrained with transformers, where you trust the file)")
        raise SecateursError(f"{path} has no weights: no .safetensors file beside its config.json")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise SecateursError(f"{path} has no tokenizer: none of {', '.join(TOKENIZER_FILES)} (save the model's "
                             "tokenizer into the directory with save_pretrained)")


def _placed_on(device: torch.device) -> dict[str, Any]:
    """Load the weights straight onto ``device`` (a GPU), never into CPU memory first and then moved."""
    return {} if device.type == "cpu" else {"device_map": {"": str(device)}}


def check_finite(model: Any, what: str) -> None:
    """A weight holding NaN or inf (a corrupted file) is an error naming the tensor, not a ``PPL nan``."""
    for name, param in model.named_parameters():
        if not all_finite(param):
            raise SecateursError(f"{what}: weight {name} holds NaN or inf values (is the file corrupted?)")


def _refuse_remote_code(path: Path) -> None:
    """A directory whose config maps its classes to its own Python files (``auto_map``) is refused."""
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text())
        except ValueError as exc:
            raise SecateursError(f"{file} is not valid JSON ({exc})") from exc
        if isinstance(config, dict) and config.get("auto_map"):
            raise SecateursError(f"{path} asks to run its own code ({name} has auto_map); secateurs never runs "
                                 "code shipped with a model")


class _CachedMeanwhile(Exception):
    """Another process finished writing the same cache entry first: its directory is kept."""


def _dequantised_cache(gguf: Path, digest: str) -> Path:
    """Dequantise ``gguf`` once into a safetensors directory under the cache; return that directory.

    Tensor by tensor (models/gguf_cache.py), so memory holds a shard of the weights, not the model; an
    architecture that cannot be written so is loaded whole by transformers and saved."""
    target = cache_root() / "models" / f"gguf-{digest[:16]}"
    if (target / "config.json").is_file():
        return target
    log.info("dequantising %s (first load only; cached in %s)", gguf.name, target)
    try:
        plan = plan_dequantisation(gguf)
        if plan is None:
            return _whole_model_cache(gguf, target)
        with atomic_directory(target, overwrite=True) as tmp:  # replaces an entry left incomplete by an older version
            plan.write(tmp)
            if (target / "config.json").is_file():
                raise _CachedMeanwhile
    except _CachedMeanwhile:
        pass
    except SecateursError:
        raise
    except Exception as exc:  # noqa: BLE001 - arbitrary files raise anything (ValueError, struct.error, ...)
        raise SecateursError(f"could not load GGUF file {gguf}: {_reason(exc)}") from exc
    return target


def _whole_model_cache(gguf: Path, target: Path) -> Path:
    """Load ``gguf`` whole through transformers and save it as ``target`` (every weight in memory at once)."""
    model, tokenizer, _ = _from_pretrained(
        str(gguf.parent), f"GGUF file {gguf}", gguf_file=gguf.name, dtype=torch.float32
    )
    # transformers marks GGUF-loaded models as quantised; the dequantised weights are plain floats.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if (target / "config.json").is_file():  # another process finished dequantising meanwhile
        return target
    with atomic_directory(target, overwrite=True) as tmp:  # replaces an entry left incomplete by an older version
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def _load_gguf(path: Path, dtype: torch.dtype | str, device: torch.device, source: dict) -> LoadedModel:
    if not path.is_file():
        raise SecateursError(f"GGUF file not found: {path}")
    digest = source.get("sha256") or sha256_file(path)
    cached = _dequantised_cache(path, digest)
    model, tokenizer, _ = _from_pretrained(str(cached), f"cached model {cached}", dtype=dtype, **_placed_on(device))
    source.update(kind="gguf", gguf=str(path), sha256=digest, cache=str(cached))
    return LoadedModel(model, tokenizer, source)


def _load_directory(path: Path, dtype: torch.dtype | str, device: torch.device, source: dict) -> LoadedModel:
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _load_gguf(ggufs[0], dtype, device, source)
        raise SecateursError(
            f"{path} is not a model directory: it has no config.json"
            + (f" and {len(ggufs)} GGUF files (name one)" if ggufs else "")
        )
    _refuse_remote_code(path)
    _check_directory_files(path)
    pruning = pruning_record(path)
    removed = removed_blocks(pruning)
    if not removed:
        model, tokenizer, _ = _from_pretrained(str(path), f"model directory {path}", dtype=dtype, **_placed_on(device))
        source.update(kind="directory", path=str(path), pruning=pruning or None)
        return LoadedModel(model, tokenizer, source)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers would warn about the removed blocks' absent weights
    try:
        model, tokenizer, info = _from_pretrained(str(path), f"pruned model directory {path}", dtype=dtype,
                                                  **_placed_on(device))
    finally:
        hf_logging.set_verbosity(verbosity)
    restore_removed(model, removed, info.get("missing_keys", []), path)
    source.update(kind="pruned-directory", path=str(path), pruning=pruning)
    return LoadedModel(model, tokenizer, source)


def load_model_streamed(spec: str, dtype: str = "auto", device: str = "auto",
                        work_dir: str | os.PathLike | None = None) -> LoadedModel:
    """``spec`` built on the meta device, its weights left in safetensors files and read one part at a
    time (``--offload disk``; models/streaming.py). A GGUF source is dequantised to the cache first."""
    from transformers import AutoTokenizer

    dev, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    directory, source = _safetensors_directory(spec)
    model, weights = load_streamed(directory, torch_dtype, dev, work_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        weights.close()
        raise SecateursError(f"could not load the tokenizer of {directory}: {str(exc).strip().splitlines()[0]}") from exc
    source["weights"] = "streamed"
    return LoadedModel(model, tokenizer, source, weights)


def _safetensors_directory(spec: str) -> tuple[Path, dict[str, Any]]:
    """The safetensors checkpoint directory behind ``spec`` (dequantising a GGUF source into the cache)."""
    source: dict[str, Any] = {"spec": spec}
    if spec in BUILTIN_MODELS:
        entry, gguf = builtin_gguf(spec)
        source.update(alias=spec, requirement=entry.requirement, note=entry.note, sha256=entry.sha256)
    else:
        path = Path(spec).expanduser()
        if path.is_dir() and not (path / "config.json").is_file() and len(list(path.glob("*.gguf"))) == 1:
            path = next(path.glob("*.gguf"))
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise SecateursError(f"{path} is not a model directory: it has no config.json")
            _refuse_remote_code(path)
            if removed_blocks(pruning_record(path)):
                raise SecateursError(f"{path} has removed blocks; --offload disk streams only complete checkpoints")
            source.update(kind="directory", path=str(path))
            return path, source
        if not (path.is_file() and path.suffix.lower() == ".gguf"):
            raise SecateursError(f"--offload disk needs a local model directory, a GGUF file or a built-in alias, "
                                 f"got '{spec}'")
        gguf = path
    digest = source.get("sha256") or sha256_file(gguf)
    cached = _dequantised_cache(gguf, digest)
    source.update(kind="gguf", gguf=str(gguf), sha256=digest, cache=str(cached))
    return cached, source


HUB_HOST = ("huggingface.co", 443)
HUB_PROBE_TIMEOUT_S = 3.0


def hub_reachable() -> bool:
    """Whether the Hugging Face hub can be used: not ``HF_HUB_OFFLINE``, and one connection attempt works."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def load_pruned(path: str | os.PathLike, dtype: str = "auto", device: str = "auto") -> LoadedModel:
    """Reload a directory written by ``secateurs prune`` (any method)."""
    if not Path(path).is_dir():
        raise SecateursError(f"pruned model directory not found: {path}")
    return load_model(str(path), dtype=dtype, device=device)


def load_model(spec: str, dtype: str = "auto", device: str = "auto") -> LoadedModel:
    """Load ``spec``: a built-in alias, a ``.gguf`` file, a local directory or an ``org/name`` hub id."""
    warn_if_untested()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
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
        offline = not hub_reachable()
        if offline and not _in_hub_cache(spec):
            raise SecateursError(f"'{spec}' is not in the local Hugging Face cache and the hub cannot be reached "
                                 "(offline?); pass a local directory, a .gguf file or a built-in alias")
        model, tokenizer, _ = _from_pretrained(spec, f"'{spec}' from the Hugging Face hub or its local cache",
                                               dtype=torch_dtype, offline=offline, **_placed_on(dev))
        source.update(kind="hub")
        return LoadedModel(model, tokenizer, source)
    close = difflib.get_close_matches(spec, list(BUILTIN_MODELS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    if looks_like_path:
        raise SecateursError(f"model path not found: {spec}")
    raise SecateursError(
        f"unknown model '{spec}'{hint}: not a built-in alias ({', '.join(BUILTIN_MODELS)}), "
        "not an existing path, and not a Hugging Face id of the form org/name"
    )
