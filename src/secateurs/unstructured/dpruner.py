"""D-Pruner: domain-specific dual pruning (Zhang et al., NAACL 2024 Findings, arXiv 2405.06275).

1. General importance G from open-domain calibration: SparseGPT's OBS saliency w^2 / d^2, block by
   block while its prune-and-update runs at the target sparsity in the sequential pipeline; the
   reconstructed weights are thrown away. G is saved (safetensors) and can be reused across domains.
2. The refined loss L(W') = L_ntp(W') + lambda * sum G (W' - W)^2, gradient g' = g + 2 lambda G (W' - W).
3. Domain importance S = sum over steps of |g' W' + (g' W')^2 / 2| (second-order Taylor, empirical
   Fisher) on domain text, during N epochs of fused per-parameter SGD on the refined loss
   (``steps`` >= 1) or from one pass of gradients at the original weights (``steps`` = 0).
4. The mask: the lowest S per comparison group, applied to the ORIGINAL weights.

Gradients are consumed parameter by parameter as soon as they are ready (post-accumulate-grad hooks)
and freed, so no second full copy of the gradients ever exists.

With a checkpoint (resume.py), G is kept once computed (stage ``general_importance``) and the domain
step's state after each epoch (stage ``domain_epochs``: S, the updated weights W', the learning rate
of the last update, the diagnostics and the losses); a killed run's successor reuses G and continues
after the last completed epoch, with the masks of an uninterrupted run. A run killed inside step 1
computes G again from the start: that pass is not resumed part-way.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from ..models.adapter import ModelAdapter
from ..data import TokenWindows
from ..errors import SecateursError
from .masks import Pattern, select_mask
from .obs import obs_prune
from .sequential import run_sequential
from .collectors import Hessian
from ..files import Artifact, save_tensors_atomic
from ..offload import DiskTensors
from ..defaults import DPRUNER_EPOCHS, DPRUNER_UPDATE_BATCH
from ..options import option
from ..plan import DOMAIN_TRAINING, OFFLOAD_CHOSEN, MemoryPolicy
from ..resume import Checkpoint, Stage
from .methods import Calibration, OBSOptions, Pruned, UnstructuredMethod, apply_mask
from ..resources import device_of

VARIANTS = ("paper", "code")
GENERAL_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
IMPORTANCE_FORMAT = "secateurs-general-importance-v1"
CODE_PENALTY_SCALE = 1 / 1000  # the authors' code: 2 lambda lr^2 G g^2 / 1000
CODE_SQUARE_SCALE = 1 / 2000  # the authors' code: |t + t^2 / 2000 + w^3|
GENERAL_IMPORTANCE_FILE = "general_importance.safetensors"
GENERAL_STAGE, DOMAIN_STAGE = "general_importance", "domain_epochs"  # their stages in a checkpoint
LOSS_CHUNK_TOKENS = 512  # positions (over the batch) whose logits exist at once in the domain step


@dataclass
class DPrunerOptions(OBSOptions):
    """D-Pruner's options (beside the sparsity pattern and OBS settings), with the authors' code's defaults."""

    lam: float = option(0.1, "weight of the general-importance penalty", flag="--dpruner-lambda")
    lr: float = option(0.03, "learning rate of the updates", flag="--dpruner-lr")
    steps: int = option(DPRUNER_EPOCHS, "epochs of fused SGD on the domain data; 0 = one pass of gradients, no updates",
                        flag="--dpruner-steps")
    variant: str = option("paper", "the paper's regulariser or the authors' code's", flag="--dpruner-variant",
                          choices=VARIANTS)
    update_batch_size: int = option(DPRUNER_UPDATE_BATCH, "windows per update", flag="--dpruner-batch-size")
    warmup: float = option(0.1, "fraction of the updates with a linear warm-up", flag="--dpruner-warmup")
    clip: float = option(1.0, "global gradient-norm clip of the updates (importance uses unclipped gradients)",
                         flag="--dpruner-clip")
    general_importance: str | None = option(None, "reuse a saved general importance (general_importance.safetensors) "
                                                  "instead of computing it")
    general_dtype: str = option("bfloat16", "dtype G is held in during the domain step (its scale only weighs "
                                            "the penalty)", flag="--dpruner-general-dtype", choices=GENERAL_DTYPES)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 0:
            raise SecateursError(f"--dpruner-steps must be 0 or more, got {self.steps}")
        if self.lam < 0 or self.lr < 0:
            raise SecateursError("--dpruner-lambda and --dpruner-lr must be >= 0")
        if self.update_batch_size < 1:
            raise SecateursError(f"--dpruner-batch-size must be at least 1, got {self.update_batch_size}")
        if not 0 <= self.warmup < 1:
            raise SecateursError(f"--dpruner-warmup must be in [0, 1), got {self.warmup}")


# --- step 1: general importance --------------------------------------------------------------------
def general_importance(adapter: ModelAdapter, windows: TokenWindows, pattern: Pattern, options: OBSOptions,
                       progress: bool = True) -> dict[str, torch.Tensor]:
    """OBS saliency of every prunable weight as SparseGPT's blocks see it; the model is left unchanged."""
    linears = adapter.prunable_linears()
    originals = {name: m.weight.detach().clone() for name, m in linears.items()}
    importance: dict[str, torch.Tensor] = {}

    def prune_layer(index, layer_linears, stats):
        for name, linear in layer_linears.items():
            result = obs_prune(linear.weight, stats[name]["hessian"].hessian, pattern, options.block_size, options.damping)
            importance[adapter.linear_name(index, name)] = result.saliency
            with torch.no_grad():
                linear.weight.copy_(result.weight)  # so that later layers see pruned outputs

    try:
        run_sequential(adapter, windows, options, lambda m: {"hessian": Hessian(m)}, prune_layer, progress,
                       desc="general importance")
    finally:
        with torch.no_grad():
            for name, linear in linears.items():
                linear.weight.copy_(originals[name])
    return importance


def save_importance(importance: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    save_tensors_atomic(path, importance, {"format": IMPORTANCE_FORMAT, **metadata})


def load_importance(path: str | os.PathLike, adapter: ModelAdapter) -> dict[str, torch.Tensor]:
    """Load a saved G and check that it belongs to this model's matrices (names and shapes)."""
    if not Path(path).is_file():
        raise SecateursError(f"general importance file not found: {path}")
    try:
        importance = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise SecateursError(f"cannot read general importance from {path}: {exc}") from exc
    linears = adapter.prunable_linears()
    missing = sorted(set(linears) - set(importance))
    if missing:
        raise SecateursError(f"{path} has no importance for {missing[0]} (and {len(missing) - 1} more matrices): "
                             "it was computed for another model")
    for name, linear in linears.items():
        if tuple(importance[name].shape) != tuple(linear.weight.shape):
            raise SecateursError(f"{path}: importance of {name} has shape {tuple(importance[name].shape)}, "
                                 f"the model's matrix has {tuple(linear.weight.shape)}: it was computed for another model")
    return _on_devices(importance, adapter)


def _on_devices(importance: dict[str, torch.Tensor], adapter: ModelAdapter) -> dict[str, torch.Tensor]:
    """``importance`` of each prunable matrix on its matrix's device."""
    return {name: importance[name].to(linear.weight.device) for name, linear in adapter.prunable_linears().items()}


# --- steps 2 and 3: domain importance under the refined loss ------------------------------------------
def _schedule(step: int, total: int, warmup: float, lr: float) -> float:
    """Linear warm-up then linear decay to 0 (transformers' linear schedule)."""
    warm = int(warmup * total)
    if step < warm:
        return lr * step / max(1, warm)
    return lr * max(0.0, (total - step) / max(1, total - warm))


class DomainImportance:
    """Accumulates S from the regularised gradients, one parameter at a time."""

    def __init__(self, adapter: ModelAdapter, general: dict[str, torch.Tensor], options: DPrunerOptions):
        self.options = options
        self.targets = {m.weight: name for name, m in adapter.prunable_linears().items()}
        dtype = GENERAL_DTYPES[options.general_dtype]
        self.general = {name: g.to(dtype) for name, g in general.items()}
        self.scores = {name: torch.zeros_like(p, dtype=torch.float32) for p, name in self.targets.items()}
        self.penalty_abs = {name: 0.0 for name in self.scores}
        self.grad_abs = {name: 0.0 for name in self.scores}
        self.originals: DiskTensors | None = None  # the weights before the updates (the penalty's W)
        self.parameter_name: dict[str, str] = {}  # a target's name -> its parameter's name in the store
        self.lr_previous = 0.0

    def regularised(self, param: nn.Parameter, grad: torch.Tensor, record: bool) -> torch.Tensor:
        """g' = g + penalty gradient (paper: 2 lambda G (W' - W); code: 2 lambda lr^2 G g^2 / 1000)."""
        name = self.targets.get(param)
        if name is None or self.options.lam == 0:
            penalty = None
        elif self.options.variant == "paper":
            penalty = (2 * self.options.lam * self.general[name]
                       * (param.detach().float() - self.originals.get(self.parameter_name[name]).float())
                       if self.originals is not None else None)  # at the original weights (no updates) it is 0
        else:
            penalty = 2 * self.options.lam * self.lr_previous ** 2 * self.general[name] * grad.pow(2) * CODE_PENALTY_SCALE
        if record and name is not None:
            self.grad_abs[name] += float(torch.linalg.vector_norm(grad, 1))
            self.penalty_abs[name] += 0.0 if penalty is None else float(torch.linalg.vector_norm(penalty, 1))
        return grad if penalty is None else penalty.add_(grad)

    def accumulate(self, param: nn.Parameter, grad: torch.Tensor) -> None:
        name = self.targets.get(param)
        if name is None:
            return
        w = param.detach().float()
        t = grad * w  # the only temporary as large as the matrix
        if self.options.variant == "paper":
            self.scores[name] += t.addcmul_(t, t, value=0.5).abs_()
        else:
            self.scores[name] += t.addcmul_(t, t, value=CODE_SQUARE_SCALE).add_(w.pow(3)).abs_()

    def save(self, stage: Stage, epochs: int, losses: list[float], weights: dict[str, nn.Parameter]) -> None:
        """Keep the state after ``epochs`` epochs: S, the updated ``weights``, and what the next epoch reads."""
        stage.save_tensors(Stage.slot("scores", epochs), self.scores)
        if weights:
            stage.save_tensors(Stage.slot("weights", epochs), weights)
        stage.save_state({"epochs_done": epochs, "losses": losses, "lr_previous": self.lr_previous,
                          "penalty_abs": self.penalty_abs, "grad_abs": self.grad_abs})

    @torch.no_grad()
    def resume(self, stage: Stage, weights: dict[str, nn.Parameter]) -> tuple[int, list[float]]:
        """Back to the state :meth:`save` kept (``weights`` take their updated values): the epochs done
        and their losses; (0, []) if none was kept."""
        state = stage.state
        if state is None:
            return 0, []
        epochs = state["epochs_done"]
        for name, saved in stage.load_tensors(Stage.slot("scores", epochs)).items():
            self.scores[name].copy_(saved)
        if weights:
            for name, saved in stage.load_tensors(Stage.slot("weights", epochs)).items():
                weights[name].copy_(saved)
        self.lr_previous = state["lr_previous"]
        self.penalty_abs, self.grad_abs = state["penalty_abs"], state["grad_abs"]
        return epochs, state["losses"]

    def diagnostics(self) -> dict[str, float]:
        """Per matrix: mean |penalty gradient| / mean |g| (does the general term matter at all?)."""
        return {name: (self.penalty_abs[name] / self.grad_abs[name] if self.grad_abs[name] else 0.0)
                for name in self.scores}


def next_token_loss(adapter: ModelAdapter, ids: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy (float32), as transformers' ``labels=`` loss, with bounded memory.

    The LM head and the loss run on ``chunk_tokens`` positions at a time under activation checkpointing,
    so the logits of the whole batch and their gradient never exist at once: only one chunk's, again
    in the backward pass. The sum over chunks is divided by the token count, as the mean it replaces.
    """
    hidden = adapter.normed_final_hidden(ids)[:, :-1]
    targets = ids[:, 1:]
    step = max(1, (chunk_tokens or LOSS_CHUNK_TOKENS) // ids.shape[0])

    def chunk_sum(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = adapter.head_logits(h).float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1), reduction="sum")

    total = sum(checkpoint(chunk_sum, hidden[:, s:s + step], targets[:, s:s + step], use_reentrant=False)
                for s in range(0, targets.shape[1], step))
    return total / targets.numel()


def _backward_with_hooks(adapter: ModelAdapter, params: list[nn.Parameter], ids: torch.Tensor,
                         on_grad: Callable[[nn.Parameter, torch.Tensor], None], share: float = 1.0) -> float:
    """Forward + backward; each parameter's gradient goes to ``on_grad`` as soon as it is ready, then is freed.

    With several processes, each ran ``share`` of the batch's windows: the gradients (and the loss) are
    the share-weighted sums over the processes, i.e. those of the whole batch (up to summation order).
    """
    ranks = adapter.ranks

    def hook(param: nn.Parameter) -> None:
        grad = param.grad.float()
        if ranks.world > 1:
            ranks.sum_(grad.mul_(share))
        on_grad(param, grad)
        param.grad = None

    handles = [p.register_post_accumulate_grad_hook(hook) for p in params]
    try:
        loss = next_token_loss(adapter, ids)
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    if ranks.world == 1:
        return float(loss.detach())
    return float(ranks.sum_(loss.detach().double().reshape(1) * share))


def domain_importance(adapter: ModelAdapter, windows: TokenWindows, general: dict[str, torch.Tensor],
                      options: DPrunerOptions, progress: bool = True,
                      stage: Stage | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """S for every prunable weight; the model's weights are restored before returning.

    ``stage``: where the state after each epoch is kept, and found to continue from.
    """
    training = options.steps > 0
    # the updates change every weight: the originals wait on disk (--offload-dir), read back one matrix at a time
    with DiskTensors(options.offload_dir, kind="dpruner") if training else contextlib.nullcontext() as originals:
        return _domain_importance(adapter, windows, general, options, originals, progress, stage)


def _domain_importance(adapter: ModelAdapter, windows: TokenWindows, general: dict[str, torch.Tensor],
                       options: DPrunerOptions, originals: DiskTensors | None,
                       progress: bool, stage: Stage | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    model = adapter.model
    acc = DomainImportance(adapter, general, options)
    training = originals is not None
    updated = dict(model.named_parameters()) if training else {}  # W': what the updates change
    params = [p for p in model.parameters() if training or p in acc.targets]
    saved_flags = {p: p.requires_grad for p in model.parameters()}
    if training:
        for name, p in model.named_parameters():
            originals.put(name, p)
        name_of = {p: n for n, p in model.named_parameters()}
        acc.originals, acc.parameter_name = originals, {name: name_of[p] for p, name in acc.targets.items()}
    device = device_of(model)
    batches = [b.to(device) for b in windows.input_ids.split(options.update_batch_size)]
    ranks = adapter.ranks  # several processes: each runs its share of every update's windows
    epochs = max(1, options.steps)
    total_updates = epochs * len(batches)
    resumed, losses = acc.resume(stage, updated) if stage is not None else (0, [])
    was_training = model.training
    model.eval()  # no dropout: the importance must not depend on random masks
    trained = set(params)
    for p in model.parameters():
        p.requires_grad_(p in trained)
    try:
        with torch.enable_grad(), tqdm(total=total_updates, initial=resumed * len(batches), desc="domain importance",
                                       unit="step", disable=not progress) as bar:
            for update in range(resumed * len(batches), total_updates):
                everyone = batches[update % len(batches)]
                mine = everyone[ranks.rank::ranks.world]
                if len(everyone) >= ranks.world:
                    ids, share = mine, len(mine) / len(everyone)
                else:  # fewer windows than processes: each runs them all and counts for 1/world
                    ids, share = everyone, 1 / ranks.world
                lr = _schedule(update, total_updates, options.warmup, options.lr)
                norm_sq = [0.0]

                def importance_step(param, grad):
                    g = acc.regularised(param, grad, record=True)
                    acc.accumulate(param, g)
                    norm_sq[0] += float(torch.linalg.vector_norm(g)) ** 2

                losses.append(_backward_with_hooks(adapter, params, ids, importance_step, share))
                if not math.isfinite(losses[-1]):
                    raise SecateursError(f"D-Pruner: the loss at update {update + 1} of {total_updates} is {losses[-1]} "
                                         "(try a smaller --dpruner-lr)")
                if training:
                    scale = lr * min(1.0, options.clip / (math.sqrt(norm_sq[0]) + 1e-6))

                    def update_step(param, grad):
                        g = acc.regularised(param, grad, record=False)
                        with torch.no_grad():
                            param.sub_(scale * g.to(param.dtype))

                    _backward_with_hooks(adapter, params, ids, update_step, share)
                acc.lr_previous = lr
                bar.set_postfix_str(f"loss {losses[-1]:.3f}")
                bar.update(1)
                if stage is not None and (update + 1) % len(batches) == 0:  # an epoch is complete
                    acc.save(stage, (update + 1) // len(batches), losses, updated)
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if originals is not None and name in originals:
                    p.copy_(originals.get(name))
                p.requires_grad_(saved_flags[p])
        model.train(was_training)
    info = {
        "updates": total_updates if training else 0,
        "passes": total_updates,
        "loss_per_epoch": [sum(losses[i:i + len(batches)]) / len(batches) for i in range(0, len(losses), len(batches))],
        "penalty_to_gradient_ratio": acc.diagnostics(),
        "resumed_after": resumed,  # epochs a killed run completed
        "epochs_run": epochs - resumed,
    }
    return acc.scores, info


# --- the method --------------------------------------------------------------------------------------
class DPruner(UnstructuredMethod):
    """D-Pruner: dual (general + domain) importance, Taylor scores under an importance-regularised loss."""

    name = "dpruner"
    options = DPrunerOptions
    default_group = "blocks:32"
    uses_domain_data = True
    # the domain step trains through the whole model: its weights stay in memory
    memory = MemoryPolicy(DOMAIN_TRAINING, budget=OFFLOAD_CHOSEN)
    score_name = "|g' w + (g' w)^2 / 2| under L_ntp + lambda sum G (w' - w)^2"

    def apply(self, adapter, data, options, progress=True, checkpoint=None):
        if data.domain is None:
            raise SecateursError("dpruner needs domain data: --domain healthcare|legal or --domain-data FILE")
        pattern = options.pattern(adapter, self.default_group)
        general_pattern = Pattern(pattern.target, "matrix") if pattern.nm is None else pattern
        general, general_source, kept = self._general(adapter, data, general_pattern, options, progress, checkpoint)
        domain_stage = checkpoint.stage(DOMAIN_STAGE) if checkpoint is not None else None
        scores, info = domain_importance(adapter, data.domain, general, options, progress, domain_stage)
        for name, linear in adapter.prunable_linears().items():
            apply_mask(linear, select_mask(scores[name], pattern))
        ratios = info.pop("penalty_to_gradient_ratio")
        resumed_after, epochs_run = info.pop("resumed_after"), info.pop("epochs_run")
        notes = []
        if options.steps == 0 and options.variant == "paper":
            notes.append("--dpruner-steps 0: gradients at the original weights, where the penalty is 0, so the "
                         "general importance has no effect on the mask")
        if options.variant == "code":
            notes.append("variant 'code': the authors' code's penalty (2 lambda lr^2 G g^2 / 1000) and "
                         "accumulation |t + t^2/2000 + w^3| (float32, loss scale 1)")
        saved = Artifact(GENERAL_IMPORTANCE_FILE, general,
                         {"format": IMPORTANCE_FORMAT, "pattern": general_pattern.describe(), "dtype": options.general_dtype})
        details = {
            "pattern": pattern.describe(), "score": self.score_name, "protocol": "sequential (general importance)",
            "propagate": options.propagate, "general_importance": general_source,
            "general_importance_pattern": general_pattern.describe(),
            "training": info,
            "penalty_to_gradient_ratio": {
                "mean": sum(ratios.values()) / len(ratios), "max": max(ratios.values()), "per_matrix": ratios},
            "this_run": {"general_importance": general_source == "computed" and not kept, "epochs": epochs_run},
        }
        if resumed_after:
            details["resumed"] = {"stage": DOMAIN_STAGE, "after": resumed_after}
        elif kept:
            details["resumed"] = {"stage": GENERAL_STAGE, "after": 1}  # its one step: G
        return Pruned(details, artifacts=[saved], notes=notes)

    @staticmethod
    def _general(adapter: ModelAdapter, data: Calibration, pattern: Pattern, options: DPrunerOptions, progress: bool,
                 checkpoint: Checkpoint | None) -> tuple[dict[str, torch.Tensor], str, bool]:
        """G in the dtype it is held (and saved) in, where it came from, and whether a killed run's
        checkpoint held it (if computed here, the checkpoint keeps it now)."""
        dtype = GENERAL_DTYPES[options.general_dtype]
        if options.general_importance:
            general = load_importance(options.general_importance, adapter)
            return {name: g.to(dtype) for name, g in general.items()}, str(options.general_importance), False
        stage = checkpoint.stage(GENERAL_STAGE) if checkpoint is not None else None
        if stage is not None and stage.state is not None:
            return _on_devices(stage.load_tensors(GENERAL_STAGE), adapter), "computed", True
        if data.general is None:
            raise SecateursError("dpruner needs general calibration data (--general-calib) or --general-importance")
        general = general_importance(adapter, data.general, pattern, options, progress)
        general = {name: g.to(dtype) for name, g in general.items()}
        if stage is not None:
            stage.save_tensors(GENERAL_STAGE, general)
            stage.save_state({"computed": True})
        return general, "computed", False
