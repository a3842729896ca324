"""A memory and work plan from a model's config alone: will a run fit, and roughly how much work is it?

The model is built on the meta device (no weights, no memory), so every parameter count comes from the
real module tree through the adapter. What each part of a run holds is written out below next to the
code that holds it; activation sizes use a per-token, per-layer count of the tensors a decoder layer
keeps (``ACTIVATION_ELEMENTS``), checked against measured peaks (``benchmarks/dpruner_memory.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .defaults import BATCH_SIZE, CALIBRATION_SAMPLES, CALIBRATION_SEQLEN, DPRUNER_EPOCHS, DPRUNER_UPDATE_BATCH, PLAN_BLOCKS
from .errors import SecateursError
from .offload import parse_bytes  # noqa: F401 - `secateurs plan --gpu-memory` reads sizes with it
from .models.adapter import ModelAdapter

GIB = 2**30
FLOAT32 = 4
# what a decoder layer keeps per token for its backward pass, in units of H (hidden) and I (intermediate):
# norm inputs and outputs, q/k/v/attention output/o input, the residual adds (~10 H); gate, up, activation
# and product in the MLP plus down's input (~6 I). Fitted to SmolLM2's measured training peak within 11%.
ACTIVATION_ELEMENTS = {"hidden": 10, "intermediate": 6}
FORWARD_ELEMENTS = {"hidden": 4, "intermediate": 3}  # what one layer's forward alone holds at its peak
LOSS_CHUNK_TOKENS = 512  # D-Pruner's chunked loss (unstructured/dpruner.py)
LOGIT_COPIES = 3  # logits, their float32 softmax, their gradient
LAYER_CACHE = "layer input and output cache"  # the sequential pipeline's; --offload moves it off the device
# what the process itself holds on the CPU before any weight: Python, torch, transformers, a tokenizer
# (measured: benchmarks/README.md, "The plan against measured peaks")
CPU_RUNTIME_BYTES = int(0.5 * 2**30)
PREFIX_CACHE = "prefix cache (every block's input)"  # the block search's; --max-memory keeps fewer

# The shapes of work a method can have; each method names its own (``MemoryPolicy.workload``).
WEIGHTS_ONLY = "weights only"  # magnitude: one matrix's scores at a time, no calibration
SEQUENTIAL_NORMS = "sequential, input norms"  # Wanda: the layer cache and one layer's input norms
SEQUENTIAL_HESSIANS = "sequential, Hessians"  # SparseGPT: the layer cache, one layer's Hessians, OBS
DOMAIN_TRAINING = "sequential, then domain training"  # D-Pruner: SparseGPT's pass, then S, G and training
BLOCK_SEARCH = "block search"  # BlockPruner and the searches: the prefix cache and one batch's logits
LAYER_STATISTIC = "layer statistic"  # ShortGPT, RM: one pass, a layer at a time, over the layer cache
WORKLOADS = (WEIGHTS_ONLY, SEQUENTIAL_NORMS, SEQUENTIAL_HESSIANS, DOMAIN_TRAINING, BLOCK_SEARCH, LAYER_STATISTIC)
OFFLOAD_CHOSEN = "offload"  # --max-memory chooses --offload from the plan
PREFIX_CACHE_KEPT = "prefix cache"  # --max-memory decides how many of the prefix cache's layer inputs are kept


@dataclass(frozen=True)
class MemoryPolicy:
    """What a method holds and what it can trade for memory: each method class declares one.

    ``workload``: the shape of its work, for `secateurs plan`. ``streams_weights``: with ``--offload
    disk`` its weights stay in their safetensors files, one layer in memory at a time. ``budget``: what
    ``--max-memory`` decides for it (None: it takes no budget). Whether it takes ``--offload`` at all is
    its options class's to say (``offload.OffloadOptions``); the registry checks that the two agree.
    """

    workload: str
    streams_weights: bool = False
    budget: str | None = None

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS or self.budget not in (None, OFFLOAD_CHOSEN, PREFIX_CACHE_KEPT):
            raise ValueError(f"unknown memory policy {self}")


@dataclass
class RunShape:
    """The sizes that decide a run's memory and work (what ``secateurs prune`` would be given)."""

    method: str  # its name, as the plan shows it
    memory: MemoryPolicy  # the method's (registry.run_shape fills it in from the method's name)
    windows: int = CALIBRATION_SAMPLES  # calibration windows
    seqlen: int = CALIBRATION_SEQLEN
    batch_size: int = BATCH_SIZE
    dtype_bytes: int = FLOAT32
    blocks: int = PLAN_BLOCKS  # blocks the structured search removes (its steps)
    domain_windows: int = CALIBRATION_SAMPLES  # D-Pruner
    update_batch_size: int = DPRUNER_UPDATE_BATCH  # D-Pruner
    epochs: int = DPRUNER_EPOCHS  # D-Pruner's --dpruner-steps
    general_bytes: int = 2  # D-Pruner's G (bfloat16)


@dataclass
class Plan:
    parameters: int
    target_parameters: int  # the prunable projections
    parts: dict[str, int]  # bytes held at the peak, by what holds them
    passes: dict[str, float]  # work, in forward passes of the whole model over the named tokens
    flops: float
    notes: list[str] = field(default_factory=list)
    offloaded: dict[str, int] | None = None  # the parts at the peak with --offload disk (None: no such mode)
    layers: int = 0  # decoder layers

    @property
    def peak_bytes(self) -> int:
        return sum(self.parts.values())

    @property
    def offloaded_peak_bytes(self) -> int | None:
        return sum(self.offloaded.values()) if self.offloaded is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {"parameters": self.parameters, "target_parameters": self.target_parameters, "parts": self.parts,
                "peak_bytes": self.peak_bytes, "offloaded": self.offloaded,
                "offloaded_peak_bytes": self.offloaded_peak_bytes, "passes": self.passes, "flops": self.flops,
                "notes": self.notes}


def meta_adapter(config: Any) -> ModelAdapter:
    """The model of ``config`` on the meta device (shapes only), behind the adapter."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return ModelAdapter(model)


def load_config(spec: str) -> Any:
    """A model's config: a config.json file, a model directory, a built-in alias (its cached copy), a hub id."""
    from transformers import AutoConfig

    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except ValueError as exc:
            raise SecateursError(f"{path} is not valid JSON ({exc})") from exc
        model_type = raw.pop("model_type", None)
        if model_type is None:
            raise SecateursError(f"{path} has no model_type")
        return AutoConfig.for_model(model_type, **raw)
    try:
        if path.is_dir():
            return AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        from .models.builtin import BUILTIN_MODELS, builtin_gguf

        if spec in BUILTIN_MODELS:
            gguf = builtin_gguf(spec)[1]
            return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        return AutoConfig.from_pretrained(spec, trust_remote_code=False, local_files_only=True)
    except SecateursError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad config
        raise SecateursError(f"cannot read the config of '{spec}': {str(exc).strip().splitlines()[0]}") from exc


def _linear_shapes(adapter: ModelAdapter, layer: int) -> list[tuple[int, int]]:
    return [(m.out_features, m.in_features) for m in adapter.layer_linears(layer).values()]


def make_plan(config: Any, shape: RunShape) -> Plan:
    adapter = meta_adapter(config)
    workload = shape.memory.workload
    dims = adapter.dimensions()
    layers = adapter.num_layers
    params = adapter.total_num_params()
    targets = sum(m.weight.numel() for m in adapter.prunable_linears().values())
    b = shape.dtype_bytes
    tokens = shape.windows * shape.seqlen
    batch_tokens = shape.batch_size * shape.seqlen
    stream = dims.hidden * b  # one token's residual stream
    forward = (FORWARD_ELEMENTS["hidden"] * dims.hidden + FORWARD_ELEMENTS["intermediate"] * dims.intermediate) * b
    logits = batch_tokens * dims.vocab * FLOAT32 * LOGIT_COPIES
    parts = {"weights": params * b}
    passes: dict[str, float] = {}
    notes: list[str] = []
    if workload in (SEQUENTIAL_NORMS, SEQUENTIAL_HESSIANS, DOMAIN_TRAINING, LAYER_STATISTIC):
        parts[LAYER_CACHE] = 2 * tokens * stream
        parts["one layer's forward"] = batch_tokens * forward
    if workload in (SEQUENTIAL_NORMS, SEQUENTIAL_HESSIANS, DOMAIN_TRAINING):
        shapes = _linear_shapes(adapter, 0)  # every layer has the same projections
        if workload == SEQUENTIAL_NORMS:
            parts["statistics (input norms)"] = sum(cols for _, cols in shapes) * FLOAT32
        else:  # SparseGPT / D-Pruner's general step: one Hessian per projection of the layer, + OBS workspace
            parts["statistics (Hessians)"] = sum(cols * cols for _, cols in shapes) * FLOAT32
            parts["OBS workspace"] = 2 * max(cols for _, cols in shapes) ** 2 * FLOAT32
        passes["calibration"] = 3.0  # capture, each layer on the cache for statistics, again to propagate
    if workload == LAYER_STATISTIC:
        passes["statistics"] = 1.0  # capture, then each layer once on the cache
    if workload == DOMAIN_TRAINING:  # the domain step is the peak (the general step's is the part above)
        general_step = parts
        domain_tokens = shape.update_batch_size * shape.seqlen
        chunk = min(domain_tokens, LOSS_CHUNK_TOKENS)
        largest = max(p.numel() for p in adapter.model.parameters())
        parts = {
            "weights": params * b,
            "S (float32)": targets * FLOAT32,
            f"G ({'bfloat16' if shape.general_bytes == 2 else 'float32'})": targets * shape.general_bytes,
            "activations (training, one update batch)": domain_tokens * layers * (
                ACTIVATION_ELEMENTS["hidden"] * dims.hidden + ACTIVATION_ELEMENTS["intermediate"] * dims.intermediate) * b,
            "logits of one loss chunk": chunk * dims.vocab * FLOAT32 * LOGIT_COPIES,
            "one gradient in flight": largest * FLOAT32,
        }
        if sum(general_step.values()) > sum(parts.values()):
            parts = general_step
            notes.append("the general-importance step (SparseGPT's pass) is the peak")
        notes.append("the original weights wait on disk during the updates: "
                     f"{params * b / GIB:.2f} GiB of free disk in the offload directory")
        # each update: forward + backward (about 3 forward passes) for S, and again for the update itself
        passes["domain (forward + backward = 3 forward passes each)"] = 3.0 * max(1, shape.epochs) * (2 if shape.epochs else 1)
    if workload == BLOCK_SEARCH:
        parts[PREFIX_CACHE] = (2 * layers + 1) * tokens * stream
        parts["one batch's forward"] = batch_tokens * forward
        parts["logits of one batch"] = logits
        candidates = sum(2 * layers - k for k in range(shape.blocks))
        passes["search (naive bound; the fast search does about half)"] = float(candidates)
    if workload == WEIGHTS_ONLY:
        parts["one matrix's scores"] = max(rows * cols for rows, cols in _linear_shapes(adapter, 0)) * FLOAT32
    offloaded = None
    if shape.memory.streams_weights:  # one layer's weights, the embeddings or head while they run, one batch
        layer_weights = sum(p.numel() for p in adapter.layers[0].parameters()) * b
        ends = max(sum(p.numel() for p in m.parameters()) for m in (adapter.embeddings, adapter.lm_head)) * b
        offloaded = {"one decoder layer's weights": layer_weights, "embeddings or LM head (read while they run)": ends}
        if workload != WEIGHTS_ONLY:
            offloaded["one batch of the layer cache (in and out)"] = 2 * batch_tokens * stream
        offloaded.update({k: v for k, v in parts.items() if k not in ("weights", LAYER_CACHE)})
    flops_per_token = 2 * params + 2 * 2 * layers * shape.seqlen * dims.heads * dims.head_dim  # matmuls + attention
    flops = flops_per_token * sum(
        n * (shape.domain_windows * shape.seqlen if "domain" in what else tokens) for what, n in passes.items())
    if workload in (SEQUENTIAL_HESSIANS, DOMAIN_TRAINING):  # OBS per projection: about 2 rows x columns^2 (the updates)
        flops += layers * sum(2 * rows * cols * cols for rows, cols in _linear_shapes(adapter, 0))
    return Plan(params, targets, parts, passes, float(flops), notes, offloaded, layers)


CAPTURE_PASSES = 1.0  # a search step's prefix-cache capture: one forward pass over the windows
SUFFIX_PASSES = 0.5  # a candidate runs the layers after its first block: half a forward pass on average
DIVISIONS = ("candidates", "windows")


def search_speedup(layers: int, steps: int, world: int, divide: str = "candidates", batches: int | None = None) -> float:
    """The greedy block search's speed-up on ``world`` processes by the cost model (no early abandon, no
    communication). Per step the current model is captured, then 2L - step candidates are scored.

    ``candidates``: each process captures every window and scores its share of the candidates.
    ``windows``: each process holds its share of the ``batches`` of windows (capture and candidates alike),
    so the work divides but the slowest process has ceil(batches / world) of them.
    """
    one = many = 0.0
    for step in range(steps):
        candidates = 2 * layers - step
        one += CAPTURE_PASSES + candidates * SUFFIX_PASSES
        if divide == "windows":
            many += (CAPTURE_PASSES + candidates * SUFFIX_PASSES) * math.ceil(batches / world) / batches
        else:
            many += CAPTURE_PASSES + math.ceil(candidates / world) * SUFFIX_PASSES
    return one / many


def choose_division(layers: int, steps: int, world: int, batches: int) -> str:
    """What the block search divides over ``world`` processes: the windows when every process gets a batch
    of them and the cost model says it is at least as fast (it also divides the prefix cache's memory),
    else the candidates."""
    if world <= 1 or batches < world:
        return "candidates"
    by = {d: search_speedup(layers, max(1, steps), world, d, batches) for d in DIVISIONS}
    return "windows" if by["windows"] >= by["candidates"] else "candidates"


def parallel_speedup(plan: Plan, shape: RunShape, world: int) -> float:
    """The speed-up of a run on ``world`` processes: the search's cost model, or the windows dealt evenly."""
    if shape.memory.workload == BLOCK_SEARCH:
        batches = math.ceil(shape.windows / shape.batch_size)
        divide = choose_division(plan.layers, shape.blocks, world, batches)
        return search_speedup(plan.layers, shape.blocks, world, divide, batches)
    return float(min(world, shape.windows))


def choose_offload(plan: Plan, budget: int, budget_text: str, on_cpu: bool) -> str:
    """The least offload whose predicted peak fits in ``budget`` bytes: ``none``, then ``disk``.

    On the CPU the process's own runtime (``CPU_RUNTIME_BYTES``) counts too. A budget too small even
    for ``disk`` (one layer with its inputs) is an error saying how much is needed.
    """
    runtime = CPU_RUNTIME_BYTES if on_cpu else 0
    if plan.peak_bytes + runtime <= budget:
        return "none"
    if plan.offloaded is not None and plan.offloaded_peak_bytes + runtime <= budget:
        return "disk"
    least = plan.offloaded_peak_bytes if plan.offloaded is not None else plan.peak_bytes
    how = "one decoder layer with its inputs, --offload disk" if plan.offloaded is not None else "the whole model"
    raise SecateursError(f"--max-memory {budget_text} is too small: this run needs about "
                         f"{(least + runtime) / GIB:.2f} GiB ({how})")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:,.1f} min" if seconds < 7200 else f"{seconds / 3600:,.1f} h"


def _search_division_text(plan: Plan, shape: RunShape, world: int) -> str:
    if choose_division(plan.layers, shape.blocks, world, math.ceil(shape.windows / shape.batch_size)) == "windows":
        return "the batches of windows are dealt over the processes, each with its share of the prefix cache)"
    return "the candidates of each step are dealt over the processes; each captures the prefix cache itself)"


def render(plan: Plan, model: str, shape: RunShape, gpus: int = 0, gpu_memory: int | None = None,
           tflops: float | None = None, gpu_memory_text: str = "") -> str:
    lines = [f"plan for {shape.method} on {model}: {plan.parameters / 1e9:.3f} B parameters "
             f"({plan.target_parameters / 1e9:.3f} B in the prunable projections), {shape.dtype_bytes} bytes per weight",
             "", "memory at the peak:"]
    width = max(len(k) for k in [*plan.parts, *(plan.offloaded or {})])
    for name, size in plan.parts.items():
        lines.append(f"  {name:<{width}}  {size / GIB:9.2f} GiB")
    lines.append(f"  {'total':<{width}}  {plan.peak_bytes / GIB:9.2f} GiB")
    cache = plan.parts.get(LAYER_CACHE)
    if plan.offloaded is not None:
        lines += ["", "memory at the peak with --offload disk (weights read from their files one layer at a time, "
                      "the layer cache on disk):"]
        for name, size in plan.offloaded.items():
            lines.append(f"  {name:<{width}}  {size / GIB:9.2f} GiB")
        lines.append(f"  {'total':<{width}}  {plan.offloaded_peak_bytes / GIB:9.2f} GiB")
    elif cache:
        lines.append(f"  {'with --offload cpu or disk':<{width}}  {(plan.peak_bytes - cache) / GIB:9.2f} GiB on the "
                     "compute device (the layer cache moves off it, one batch at a time comes back)")
    if gpus and gpu_memory:
        verdict = "fits" if plan.peak_bytes <= gpu_memory else "does NOT fit"
        lines.append(f"  on one GPU of {gpu_memory_text or f'{gpu_memory / GIB:.1f} GiB'}: {verdict}")
    lines += ["", "work:"]
    for what, n in plan.passes.items():
        lines.append(f"  {what}: {n:g} forward passes")
    lines.append(f"  about {plan.flops / 1e12:,.1f} TFLOP in all")
    if tflops:
        seconds = plan.flops / (tflops * 1e12)
        lines.append(f"  at {tflops:g} TFLOP/s sustained: about {_duration(seconds)} on one device "
                     "(arithmetic only: memory traffic and overheads come on top)")
        if gpus > 1:
            speedup = parallel_speedup(plan, shape, gpus)
            lines.append(f"  on {gpus} GPUs (torchrun): about {_duration(seconds / speedup)}, {speedup:.1f}x by the cost "
                         "model (" + (_search_division_text(plan, shape, gpus) if shape.memory.workload == BLOCK_SEARCH else
                                      "the calibration windows are dealt over the processes)"))
    lines += [f"note: {n}" for n in plan.notes]
    lines.append(f"note: on the CPU the process itself holds about {CPU_RUNTIME_BYTES / GIB:.1f} GiB more (Python, "
                 "torch, transformers); evaluation after pruning adds its logits (batch x seqlen x vocabulary x 4 bytes "
                 "x 2)")
    return "\n".join(lines)
