"""Log-likelihood scoring and greedy generation for evaluation tasks (lm-evaluation-harness semantics).

Tokenisation as the harness: trailing spaces of the context move to the continuation; the context is
tokenised alone, the continuation is what tokenising context + continuation adds after it; no BOS.
When all choices share the context, it runs once and its KV cache is reused for every choice.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..compat import cache_keyword, output_cache
from .metrics import CHOICE_METRICS, GENERATION, GENERATION_METRICS, Choices, Generations
from .tasks import Item
from ..distributed import Ranks
from ..resources import device_of


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return context_ids, whole[len(context_ids):]


@torch.no_grad()
def loglikelihoods_unbatched(model: torch.nn.Module, tokenizer: Any, item: Item) -> list[float]:
    """Reference: one full forward pass per choice."""
    scores = []
    for context, continuation in zip(item.contexts, item.continuations):
        ctx, cont = encode_pair(tokenizer, context, continuation)
        ids = torch.tensor([ctx + cont], device=device_of(model))
        logits = model(input_ids=ids[:, :-1], use_cache=False).logits.float()
        logprobs = F.log_softmax(logits[0, len(ctx) - 1:], dim=-1)
        scores.append(float(logprobs.gather(-1, torch.tensor(cont, device=ids.device).unsqueeze(-1)).sum()))
    return scores


@torch.no_grad()
def loglikelihoods(model: torch.nn.Module, tokenizer: Any, item: Item) -> list[float]:
    """Log-probability of each choice's continuation; the shared context runs once."""
    if not item.shared_context:
        return _padded(model, tokenizer, item)
    device = device_of(model)
    pairs = [encode_pair(tokenizer, item.contexts[0], c) for c in item.continuations]
    ctx = pairs[0][0]
    if any(p[0] != ctx for p in pairs) or not ctx or len(ctx) + max(len(p[1]) for p in pairs) > max_length(model) + 1:
        return _padded(model, tokenizer, item)
    conts = [p[1] for p in pairs]
    out = model(input_ids=torch.tensor([ctx], device=device), use_cache=True)
    first = F.log_softmax(out.logits[0, -1].float(), dim=-1)
    cache = output_cache(out)
    k, longest = len(conts), max(len(c) for c in conts)
    scores = [float(first[c[0]]) for c in conts]
    if longest > 1:
        cache.batch_repeat_interleave(k)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((k, longest - 1), pad, dtype=torch.long, device=device)
        mask = torch.zeros((k, len(ctx) + longest - 1), dtype=torch.long, device=device)
        mask[:, :len(ctx)] = 1
        for i, c in enumerate(conts):
            ids[i, :len(c) - 1] = torch.tensor(c[:-1])
            mask[i, len(ctx):len(ctx) + len(c) - 1] = 1
        logits = model(input_ids=ids, attention_mask=mask, use_cache=True, **{cache_keyword(model): cache}).logits.float()
        logprobs = F.log_softmax(logits, dim=-1)
        for i, c in enumerate(conts):
            if len(c) > 1:
                target = torch.tensor(c[1:], device=device)
                scores[i] += float(logprobs[i, :len(c) - 1].gather(-1, target.unsqueeze(-1)).sum())
    return scores


def max_length(model: torch.nn.Module) -> int:
    """Longest input the harness feeds the model; longer inputs lose their first tokens."""
    return int(getattr(model.config, "max_position_embeddings", None) or 2048)


def _padded(model: torch.nn.Module, tokenizer: Any, item: Item) -> list[float]:
    """Different contexts (WinoGrande) or over-long inputs: all choices in one right-padded batch.

    As the harness, an input longer than the model's maximum length keeps its last tokens.
    """
    device = device_of(model)
    pairs = [encode_pair(tokenizer, c, t) for c, t in zip(item.contexts, item.continuations)]
    seqs = [(ctx + cont)[-(max_length(model) + 1):] for ctx, cont in pairs]
    longest = max(len(s) for s in seqs) - 1
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(seqs), longest), pad, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s) - 1] = torch.tensor(s[:-1])
        mask[i, :len(s) - 1] = 1
    logprobs = F.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), dim=-1)
    scores = []
    for i, (seq, (_, cont)) in enumerate(zip(seqs, pairs)):
        start = len(seq) - 1 - len(cont)  # the continuation is always the last len(cont) tokens
        target = torch.tensor(cont, device=device)
        scores.append(float(logprobs[i, start:start + len(cont)].gather(-1, target.unsqueeze(-1)).sum()))
    return scores


@torch.no_grad()
def generate_greedy(model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int,
                    first_line: bool = True) -> str:
    """Greedy continuation of ``prompt``, stripped, and cut at the first newline (``first_line``)."""
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=device_of(model))
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    return text.split("\n")[0].strip() if first_line else text


def run_task(model: torch.nn.Module, tokenizer: Any, data, progress: bool = True,
             log: list[dict] | None = None, scorer=None, ranks: Ranks = Ranks()) -> dict[str, Any]:
    """Score every item of a task; the task's metrics with standard errors (and per-item logs).

    ``scorer`` replaces :func:`loglikelihoods` (e.g. the lm-evaluation-harness bridge). With several
    processes (``ranks``), each scores its share of the rows and every process gets every row's
    outcome, in row order, so the metrics are those of one process.
    """
    task = data.task
    model.eval()
    ranks.check_enough(len(data.items), f"rows of {task.name}")
    mine = ranks.share(data.items)
    rows = tqdm([item for _, item in mine], desc=task.name, unit="row", disable=not progress or not ranks.main, leave=False)
    if task.kind == GENERATION:
        settings = task.generation
        preds = ranks.merge({i: generate_greedy(model, tokenizer, item.contexts[0], settings.max_new_tokens,
                                                settings.first_line)
                             for (i, _), item in zip(mine, rows)})
        if log is not None:
            log.extend({"task": task.name, "id": item.id, "prediction": pred, "reference": item.reference}
                       for item, pred in zip(data.items, preds))
        texts = Generations(preds, [i.reference for i in data.items])
        metrics = {key: value for name in task.metrics for key, value in GENERATION_METRICS[name](texts).items()}
        return {"metrics": metrics, "n": len(preds)}
    if hasattr(scorer, "score_all"):  # the harness batches the rows itself
        scores = scorer.score_all(list(rows))
    else:
        scores = [(scorer or loglikelihoods)(model, tokenizer, item) for item in rows]
    all_lls = ranks.merge({i: lls for (i, _), lls in zip(mine, scores)})
    golds, preds, preds_norm, acc, acc_norm = [], [], [], [], []
    for item, lls in zip(data.items, all_lls):
        pred = max(range(len(lls)), key=lambda i: lls[i])
        normed = [ll / len(choice) for ll, choice in zip(lls, item.choices)]
        pred_norm = max(range(len(normed)), key=lambda i: normed[i])
        golds.append(item.gold)
        preds.append(pred)
        preds_norm.append(pred_norm)
        acc.append(float(pred == item.gold))
        acc_norm.append(float(pred_norm == item.gold))
        if log is not None:
            log.append({"task": task.name, "id": item.id, "loglikelihoods": lls, "prediction": pred,
                        "prediction_norm": pred_norm, "gold": item.gold, "acc": acc[-1], "acc_norm": acc_norm[-1]})
    choices = Choices(golds, preds, preds_norm, len(data.items[0].choices))
    metrics = {key: value for name in task.metrics for key, value in CHOICE_METRICS[name](choices).items()}
    # How often each choice was picked: shows a model that collapsed onto one answer (e.g. always "yes").
    predicted = [preds.count(i) for i in range(max(len(item.choices) for item in data.items))]
    return {"metrics": metrics, "n": len(acc), "predicted": predicted}
