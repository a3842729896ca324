"""Where a model's weights live while a method works through it, one decoder layer at a time.

:class:`ResidentWeights` (the default): every weight is in memory on its device all along.

:class:`StreamedWeights` (``--offload disk``): the model is built on the meta device (its shapes, no
memory) and the weights stay in the checkpoint's safetensors files. A part of the model (a decoder
layer, the embeddings, the final norm and head) gets its real weights only inside
``onloaded(...)``: memory-mapped from the files, copied when the caller will change them, and
released when the block ends. A part that was changed (a pruned layer) is written with
:meth:`StreamedWeights.changed` to a shard in a private work directory, and read from there from then
on; :meth:`StreamedWeights.save` assembles the output checkpoint from those shards and the untouched
tensors, one tensor at a time. So the process holds one decoder layer, never the model.

Both classes answer the same calls, so the pipelines that walk the decoder (sequential.py, the
layer-wise perplexity) are written once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import weakref
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..errors import SecateursError
from ..files import check_free_space, work_directory
from ..resources import all_finite, device_of

INDEX_FILE = "model.safetensors.index.json"  # transformers' index of a sharded checkpoint
SINGLE_FILE = "model.safetensors"


class ResidentWeights:
    """Every weight in memory on the model's device: onloading and writing back do nothing."""

    streamed = False

    def __init__(self, model: nn.Module):
        self.model = model

    @property
    def device(self) -> torch.device:
        return device_of(self.model)

    @contextlib.contextmanager
    def onloaded(self, *modules: nn.Module, writable: bool = False) -> Iterator[None]:
        yield

    def changed(self, *modules: nn.Module) -> None:
        pass

    def close(self) -> None:
        pass


def checkpoint_files(directory: Path) -> dict[str, Path]:
    """Which safetensors file of a checkpoint directory holds each tensor (sharded or single file)."""
    from safetensors import safe_open

    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: directory / file for key, file in weight_map.items()}
    single = directory / SINGLE_FILE
    if not single.is_file():
        raise SecateursError(f"{directory} has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE}); "
                             "--offload disk reads the weights from safetensors files")
    with safe_open(single, "pt") as f:
        return {key: single for key in f.keys()}


class StreamedWeights:
    """The weights of a meta-device ``model``, read from the safetensors files of ``checkpoint``.

    ``device`` and ``dtype``: where and in what type onloaded weights are computed with. Changed parts
    are written to a private directory under ``work_dir`` (default: the system's temporary directory),
    removed by :meth:`close` (also when the object is garbage-collected or the process exits).
    """

    streamed = True

    def __init__(self, model: nn.Module, checkpoint: Path, device: torch.device, dtype: torch.dtype,
                 work_dir: str | Path | None = None):
        self.model, self.checkpoint, self.device, self.dtype = model, Path(checkpoint), device, dtype
        self.files = checkpoint_files(self.checkpoint)
        self._names = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
        self._key = self._file_keys(model)
        self._written: dict[str, Path] = {}  # tensor key -> the work shard holding its changed value
        self._checked: set[str] = set()  # source tensors already checked to be finite
        self.work = work_directory("weights", work_dir)  # a killed run's are removed by the next one
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.work, True)

    def _file_keys(self, model: nn.Module) -> dict[str, str]:
        """The file key of every parameter name (a tied head is stored under the embeddings' key)."""
        by_param: dict[int, list[str]] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            by_param.setdefault(id(param), []).append(name)
        keys = {}
        for names in by_param.values():
            stored = [n for n in names if n in self.files]
            if not stored:
                raise SecateursError(f"{self.checkpoint}: the weights have no tensor {names[0]}")
            keys.update({n: stored[0] for n in names})
        return keys

    def close(self) -> None:
        self._cleanup()

    # --- reading -------------------------------------------------------------------------------------
    def _read(self, key: str, writable: bool, device: torch.device | None = None) -> torch.Tensor:
        """Tensor ``key`` on ``device`` (default: the compute device) in the compute dtype."""
        from safetensors import safe_open

        file = self._written.get(key, self.files[key])
        try:
            with safe_open(file, "pt") as f:
                mapped = f.get_tensor(key)  # memory-mapped: pages are read as they are used
        except (OSError, RuntimeError) as exc:
            raise SecateursError(f"cannot read weight {key} from {file}: {exc}") from exc
        if key not in self._written and key not in self._checked:
            if mapped.is_floating_point() and not all_finite(mapped):
                raise SecateursError(f"{self.checkpoint}: weight {key} holds NaN or inf values (is the file corrupted?)")
            self._checked.add(key)
        dtype = self.dtype if mapped.is_floating_point() else mapped.dtype
        return mapped.to(device=device or self.device, dtype=dtype, copy=writable)

    @contextlib.contextmanager
    def onloaded(self, *modules: nn.Module, writable: bool = False) -> Iterator[None]:
        """``modules`` hold their real weights inside the block (``writable``: private copies the caller
        may change in place; otherwise they may be read-only views of the files)."""
        originals = []  # (module, name, its meta parameter): put back as they were, ties included
        try:
            for module in modules:
                prefix = self._names[id(module)]
                for name, sub in module.named_modules(prefix=prefix):
                    for attr, param in list(sub._parameters.items()):
                        if param is not None and param.device.type == "meta":
                            tensor = self._read(self._key[f"{name}.{attr}"], writable)
                            originals.append((sub, attr, param))
                            setattr(sub, attr, nn.Parameter(tensor, requires_grad=False))
            yield
        finally:
            for sub, attr, param in reversed(originals):
                setattr(sub, attr, param)

    # --- writing -------------------------------------------------------------------------------------
    def changed(self, *modules: nn.Module) -> None:
        """Keep the current (onloaded) weights of ``modules``: they replace the files' from now on."""
        from safetensors.torch import save_file

        for module in modules:
            prefix = self._names[id(module)]
            tensors = {self._key[f"{prefix}.{name}"]: param.detach().to("cpu").contiguous()
                       for name, param in module.named_parameters()}
            shard = self.work / f"{prefix}.safetensors"
            check_free_space(shard, sum(t.numel() * t.element_size() for t in tensors.values()))
            try:
                save_file(tensors, str(shard), metadata={"format": "pt"})
            except OSError as exc:
                raise SecateursError(f"offload to {self.work} failed: {exc.strerror or exc}") from exc
            self._written.update({key: shard for key in tensors})

    def save(self, directory: Path) -> None:
        """Write the weights as a sharded safetensors checkpoint in ``directory`` (config not included):
        changed parts as their shards, each untouched tensor copied to a file of its own, and the index."""
        from safetensors.torch import save_file

        weight_map: dict[str, str] = {}
        for shard in sorted(set(self._written.values())):
            target = directory / f"model-{shard.name}"
            _link_or_copy(shard, target)
            weight_map.update({key: target.name for key, file in self._written.items() if file == shard})
        for number, key in enumerate(sorted(k for k in self.files if k not in self._written)):
            tensor = self._read(key, writable=False, device=torch.device("cpu")).contiguous()  # one at a time
            target = directory / f"model-{number:05d}.safetensors"
            check_free_space(target, tensor.numel() * tensor.element_size())
            save_file({key: tensor}, str(target), metadata={"format": "pt"})
            weight_map[key] = target.name
            del tensor
        total = sum(_stored_bytes(directory / file, key) for key, file in weight_map.items())  # headers excluded
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link when both are on one filesystem (no bytes copied), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def load_streamed(directory: Path, dtype: torch.dtype | str, device: torch.device,
                  work_dir: str | Path | None = None) -> tuple[nn.Module, StreamedWeights]:
    """A model built on the meta device from ``directory``'s config, and its weights left in the files."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged config raises anything
        raise SecateursError(f"could not read the config of {directory}: {str(exc).strip().splitlines()[0]}") from exc
    files = checkpoint_files(directory)
    if dtype == "auto":  # the checkpoint's own: that of its first floating tensor
        dtype = _stored_dtype(next(iter(files.values())))
    with init_empty_weights(include_buffers=False):  # parameters on meta; buffers (rotary tables) real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # a tied head shares the embeddings' (meta) parameter, stored once in the files
    model.eval()
    return model, StreamedWeights(model, directory, device, dtype, work_dir)


# safetensors' names of the floating dtypes a model's weights may have
_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _stored_dtype(file: Path) -> torch.dtype:
    """The dtype of the first floating tensor in ``file``: the checkpoint's dtype (``--dtype auto``)."""
    from safetensors import safe_open

    with safe_open(file, "pt") as f:
        for key in f.keys():
            dtype = _SAFETENSORS_DTYPES.get(f.get_slice(key).get_dtype())
            if dtype is not None:
                return dtype
    return torch.float32


def _stored_bytes(file: Path, key: str) -> int:
    """The bytes of tensor ``key`` in ``file`` (its shape and dtype; the memory map reads nothing)."""
    from safetensors import safe_open

    with safe_open(file, "pt") as f:
        tensor = f.get_tensor(key)
        return tensor.numel() * tensor.element_size()
