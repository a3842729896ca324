"""Model adapter: where the decoder layers, blocks, norms, embeddings and head of a causal LM are.

A *block* is one residual branch of a decoder layer together with the norms that belong to it:
- MHA block: ``x = x + Attn(norm_1(x))`` (Gemma 3 also norms the attention output),
- MLP block: ``x = x + MLP(norm_2(x))`` (Gemma 3 also norms the MLP output).
Removing a block skips its branch, so the residual stream passes unchanged; every method removes
blocks through :meth:`ModelAdapter.remove_blocks`. The adapter (with ``families.py``) is the only
place that knows a model's attribute names: layers, blocks and norms, projections, how a layer is called.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal

import torch
from torch import nn

from ..compat import find_cache
from ..distributed import Ranks
from ..errors import SecateursError
from .streaming import ResidentWeights, StreamedWeights
from .families import PROJECTIONS, SUPPORTED_FAMILIES, BlockKind, layout_from_structure

BLOCK_KINDS: tuple[BlockKind, ...] = ("mha", "mlp")


@dataclass(frozen=True, order=True)
class Block:
    """One residual block: ``Block("mha", 3)`` is layer 3's attention block. Sorts MHA first."""

    kind: BlockKind
    layer: int

    @property
    def name(self) -> str:
        return f"{self.kind}.{self.layer}"

    @classmethod
    def parse(cls, name: str) -> "Block":
        kind, _, layer = name.partition(".")
        if kind not in BLOCK_KINDS or not layer.isdigit():
            raise SecateursError(f"bad block name '{name}': expected mha.N or mlp.N")
        return cls(kind, int(layer))  # type: ignore[arg-type]

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Dimensions:
    """What a model's config says about its shapes (the same names for every family)."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    norm_eps: float
    rope_theta: float
    rope_type: str
    max_positions: int
    vocab: int
    tied: bool
    hidden_act: str
    sliding_window: int | None  # the window of the layers that use one; None when every layer attends to all


class SkippedAttention(nn.Module):
    """Stands in for a removed attention block: its branch contributes nothing to the residual.

    With a KV cache, it still appends a placeholder to its cache slot, so the cache length that
    transformers reads positions from (layer 0's, by default) stays right even when layer 0's attention
    is gone, and every layer keeps its index and cache type (full, sliding window, static). The cache
    is found by its type among the call's arguments, whatever transformers calls the argument. The
    placeholder is one head of width 1, or the slot's own shape if the cache was allocated in advance.
    """

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        cache = find_cache(args, kwargs)
        if cache is not None:
            batch, length = hidden_states.shape[:2]
            heads, width = self._slot_shape(cache)
            placeholder = hidden_states.new_zeros(batch, heads, length, width)
            cache.update(placeholder, placeholder, self.layer_idx)
        return torch.zeros_like(hidden_states), None

    def _slot_shape(self, cache) -> tuple[int, int]:
        layers = getattr(cache, "layers", [])
        slot = layers[self.layer_idx] if self.layer_idx < len(layers) else None
        keys = getattr(slot, "keys", None) if getattr(slot, "is_initialized", False) else None
        if isinstance(keys, torch.Tensor) and keys.dim() == 4:
            return keys.shape[1], keys.shape[-1]
        return 1, 1


class SkippedMLP(nn.Module):
    """Stands in for a removed MLP block."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


class _Bypass(nn.Module):
    """Stands in for a whole decoder layer while its call is recorded: returns its input stream."""

    def __init__(self, index: int, record: Callable[[int, tuple, dict], None]):
        super().__init__()
        self.index, self.record = index, record

    def forward(self, *args, **kwargs) -> torch.Tensor:
        self.record(self.index, args, kwargs)
        return ModelAdapter.layer_input(args, kwargs)


def _num_params(modules: Iterable[nn.Module]) -> int:
    seen: set[int] = set()
    total = 0
    for module in modules:
        for param in module.parameters():
            if id(param) not in seen:
                seen.add(id(param))
                total += param.numel()
    return total


class ModelAdapter:
    """Structural view of a Hugging Face causal LM (Llama, Mistral, Qwen2, Gemma 3 text)."""

    def __init__(self, model: nn.Module, weights: "ResidentWeights | StreamedWeights | None" = None,
                 ranks: Ranks | None = None):
        self.model = model
        self.weights = weights if weights is not None else ResidentWeights(model)  # where they live (streaming.py)
        self.ranks = ranks if ranks is not None else Ranks()  # the processes sharing the work (distributed.py)
        config = model.config
        self.family = getattr(config, "model_type", type(model).__name__)
        if self.family not in SUPPORTED_FAMILIES:
            raise SecateursError(
                f"unsupported architecture '{self.family}' ({type(model).__name__}); "
                f"supported: {', '.join(sorted(SUPPORTED_FAMILIES))}"
            )
        decoder = model.get_decoder()
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            raise SecateursError(f"cannot find the decoder layers of {type(model).__name__}")
        layout = layout_from_structure(layers[0])
        if layout is not SUPPORTED_FAMILIES[self.family]:
            raise SecateursError(
                f"{type(model).__name__} ({self.family}) does not have the expected "
                f"{SUPPORTED_FAMILIES[self.family].name} layer structure"
            )
        self.layout = layout
        self.decoder = decoder
        self.layers: nn.ModuleList = layers
        self.embeddings: nn.Module = model.get_input_embeddings()
        self.lm_head: nn.Module = model.get_output_embeddings()
        self.final_norm: nn.Module = decoder.norm

    # --- structure -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the model computes (its weights may be on the meta device while streamed)."""
        return self.weights.device

    @property
    def max_positions(self) -> int:
        """The longest sequence the model was trained for (``max_position_embeddings``)."""
        return int(getattr(self.model.config, "max_position_embeddings", None) or 2**31 - 1)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def blocks(self, kind: BlockKind | Literal["mix"] = "mix") -> list[Block]:
        """All blocks in the canonical order: MHA 0..L-1, then MLP 0..L-1."""
        kinds = BLOCK_KINDS if kind == "mix" else (kind,)
        return [Block(k, i) for k in kinds for i in range(self.num_layers)]

    def check_block(self, block: Block) -> Block:
        if not 0 <= block.layer < self.num_layers:
            raise SecateursError(f"block {block} does not exist: the model has {self.num_layers} layers")
        return block

    def block_modules(self, block: Block) -> list[nn.Module]:
        """The sub-module and its norms, i.e. everything that belongs to ``block``."""
        layer = self.layers[self.check_block(block).layer]
        names = (self.layout.submodule(block.kind), *self.layout.norms(block.kind))
        return [getattr(layer, n) for n in names]

    def submodule(self, block: Block) -> nn.Module:
        return getattr(self.layers[self.check_block(block).layer], self.layout.submodule(block.kind))

    def is_removed(self, block: Block) -> bool:
        return isinstance(self.submodule(block), (SkippedAttention, SkippedMLP))

    def removed_blocks(self) -> list[Block]:
        return [b for b in self.blocks() if self.is_removed(b)]

    def projection(self, layer: int, role: str) -> nn.Linear | None:
        """Layer ``layer``'s projection ``role`` (q, k, v, o, gate, up, down); None if its block was removed."""
        kind, name = PROJECTIONS[role]
        block = Block(kind, layer)  # type: ignore[arg-type]
        return None if self.is_removed(block) else getattr(self.submodule(block), name)

    def norm(self, block: Block) -> nn.Module:
        """The norm a block applies to the residual stream before its branch (its first norm)."""
        return self.entry_module(block)

    def dimensions(self) -> "Dimensions":
        """The shapes and constants an engine's format needs, from the config."""
        c = self.model.config
        heads = c.num_attention_heads
        rope = getattr(c, "rope_parameters", None) or {}
        return Dimensions(
            hidden=c.hidden_size, heads=heads, kv_heads=getattr(c, "num_key_value_heads", None) or heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads, intermediate=c.intermediate_size,
            norm_eps=c.rms_norm_eps, rope_theta=rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)),
            rope_type=rope.get("rope_type", "default"), max_positions=self.max_positions, vocab=c.vocab_size,
            tied=bool(getattr(c, "tie_word_embeddings", False)),
            hidden_act=getattr(c, "hidden_act", None) or getattr(c, "hidden_activation", "silu"),
            sliding_window=self._sliding_window(),
        )

    def _sliding_window(self) -> int | None:
        """The attention window some layers use, or None (Qwen2 and Gemma 3 name them in ``layer_types``)."""
        c = self.model.config
        window = getattr(c, "sliding_window", None)
        types = getattr(c, "layer_types", None)
        if window is None or (types is not None and "sliding_attention" not in types):
            return None
        return None if window >= self.max_positions else int(window)

    def block_module_names(self, block: Block) -> list[str]:
        """Qualified names (as in the model's state dict) of the modules that make up ``block``."""
        wanted = {id(m) for m in self.block_modules(block)}
        return [name for name, module in self.model.named_modules() if id(module) in wanted]

    def layer_linears(self, index: int) -> dict[str, nn.Linear]:
        """The prunable projections of one decoder layer (q, k, v, o, gate, up, down), by relative name."""
        return {name: m for name, m in self.layers[index].named_modules() if isinstance(m, nn.Linear)}

    @staticmethod
    def linear_name(layer: int, name: str) -> str:
        """The model-wide name of layer ``layer``'s projection ``name`` (as saved importance files key it)."""
        return f"layers.{layer}.{name}"

    def prunable_linears(self) -> dict[str, nn.Linear]:
        """Every prunable projection, named ``layers.{i}.{relative name}`` (embeddings and head excluded)."""
        return {self.linear_name(i, name): m for i in range(self.num_layers) for name, m in self.layer_linears(i).items()}

    # --- parameter counts (tied embeddings counted once) ---------------------------------------
    def block_num_params(self, block: Block) -> int:
        return _num_params(self.block_modules(block))

    def other_num_params(self) -> int:
        """Parameters outside every block: embeddings, final norm, head (tied weights once)."""
        return _num_params([self.embeddings, self.final_norm, self.lm_head])

    def total_num_params(self) -> int:
        return _num_params([self.model])

    def entry_module(self, block: Block) -> nn.Module:
        """The block's first module: its input is the residual stream entering the block."""
        layer = self.layers[self.check_block(block).layer]
        return getattr(layer, self.layout.norms(block.kind)[0])

    # --- removal -------------------------------------------------------------------------------
    def _swap(self, block: Block) -> dict[str, nn.Module]:
        """Replace a block's sub-module and norms by pass-through stubs; return the originals."""
        layer = self.layers[self.check_block(block).layer]
        names = (self.layout.submodule(block.kind), *self.layout.norms(block.kind))
        originals = {name: getattr(layer, name) for name in names}
        stub = SkippedAttention(getattr(originals[names[0]], "layer_idx", block.layer)) if block.kind == "mha" else SkippedMLP()
        setattr(layer, names[0], stub)
        for norm in names[1:]:
            setattr(layer, norm, nn.Identity())
        return originals

    def remove_blocks(self, blocks: Iterable[Block]) -> None:
        """Remove blocks in place: their weights are dropped and their branches add nothing."""
        for block in blocks:
            self._swap(block)

    @contextlib.contextmanager
    def skipped(self, blocks: Iterable[Block]) -> Iterator[None]:
        """Temporarily remove ``blocks`` (the same mechanism as :meth:`remove_blocks`), then restore."""
        saved = [(b, self._swap(b)) for b in blocks if not self.is_removed(b)]
        try:
            yield
        finally:
            for block, originals in reversed(saved):
                layer = self.layers[block.layer]
                for name, module in originals.items():
                    setattr(layer, name, module)

    def drop_layers(self, layers: Iterable[int]) -> None:
        """Physically remove whole decoder layers and renumber the rest (config, cache indices included)."""
        gone = set(layers)
        config = self.model.config
        keep = [i for i in range(self.num_layers) if i not in gone]
        self.decoder.layers = nn.ModuleList([self.layers[i] for i in keep])
        self.layers = self.decoder.layers
        for new_index, layer in enumerate(self.layers):
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = new_index
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = [config.layer_types[i] for i in keep]
        config.num_hidden_layers = len(keep)

    # --- running layers one at a time (the calling convention of transformers' decoder layers) ---
    @staticmethod
    def layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
        """The residual stream a decoder layer was called with (positional, or ``hidden_states=``)."""
        return args[0] if args else kwargs["hidden_states"]

    @staticmethod
    def layer_call_kwargs(kwargs: dict) -> dict:
        """A layer call's other arguments (masks, rotary tables, positions), to call it again later."""
        return {k: v for k, v in kwargs.items() if k != "hidden_states"}

    def run_layer(self, index: int, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """Decoder layer ``index`` on ``hidden``; its output stream (layers may return a tuple)."""
        out = self.layers[index](hidden, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    @contextlib.contextmanager
    def layers_bypassed(self, record: Callable[[int, tuple, dict], None]) -> Iterator[None]:
        """Every decoder layer replaced by a pass-through that calls ``record(index, args, kwargs)``, and
        the final norm by the identity: a decoder run then computes only the embeddings and what the
        layers are called with (masks, rotary tables), with no layer weights needed."""
        originals, norm = list(self.layers), self.decoder.norm
        for index in range(len(originals)):
            self.layers[index] = _Bypass(index, record)
        self.decoder.norm = nn.Identity()
        try:
            yield
        finally:
            for index, layer in enumerate(originals):
                self.layers[index] = layer
            self.decoder.norm = norm

    def run_decoder(self, input_ids: torch.Tensor) -> None:
        """The decoder (no LM head, no cache) on ``input_ids``: the pass that capture hooks watch."""
        self.decoder(input_ids=input_ids, use_cache=False)

    def head_rows(self, rows: torch.Tensor) -> nn.Linear:
        """The LM head restricted to the vocabulary entries ``rows`` (a copy, for cheap partial logits)."""
        weight = self.lm_head.weight.detach()[rows]
        bias = getattr(self.lm_head, "bias", None)
        head = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None,
                                  device=weight.device, dtype=weight.dtype)
        head.weight.data.copy_(weight)
        if bias is not None:
            head.bias.data.copy_(bias.detach()[rows])
        return head.requires_grad_(False)

    def logits(self, hidden: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
        """Final norm + head (+ Gemma's logit soft-capping) applied to the last hidden state.

        ``head`` replaces the LM head, e.g. by a part of it from :meth:`head_rows`.
        """
        return self.head_logits(self.final_norm(hidden), head)

    def normed_final_hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The decoder (no cache) on ``input_ids``: its last hidden state, after the final norm."""
        return self.decoder(input_ids=input_ids, use_cache=False).last_hidden_state

    def head_logits(self, normed: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
        """The LM head (+ Gemma's logit soft-capping) on a hidden state that went through the final norm."""
        logits = (self.lm_head if head is None else head)(normed)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits
