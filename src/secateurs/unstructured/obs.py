"""SparseGPT's OBS prune-and-update (Frantar & Alistarh, 2023), written from the paper.

For one linear layer with weights W (out x in) and H = (2/n) X X^T of its inputs: columns are visited
left to right in blocks; within a block the mask is chosen by the OBS saliency w^2 / d^2 (d = diagonal of
the upper Cholesky factor of H^-1), each pruned weight's error is spread over the not-yet-visited columns
of its row, and the block's accumulated error is applied to all later columns at once. The saliency
seen by each block (after earlier blocks' compensation) is D-Pruner's general importance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SecateursError
from .masks import Pattern, select_mask

DEFAULT_BLOCK_SIZE = 128
DEFAULT_DAMPING = 0.01  # fraction of the mean diagonal of H added to it


@dataclass
class ObsResult:
    weight: torch.Tensor  # reconstructed weights, zeros where pruned
    mask: torch.Tensor  # True = pruned
    saliency: torch.Tensor  # w^2 / d^2 per weight as its block saw it


def inverse_hessian_factor(hessian: torch.Tensor, weight: torch.Tensor, damping: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damping * mean(diag H) * I)^-1; dead inputs get H_jj = 1, w_:j = 0."""
    h = hessian.clone().float()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    weight[:, dead] = 0
    h += damping * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], device=h.device)
    try:
        lower = torch.linalg.cholesky(h)
        inverse = torch.cholesky_inverse(lower)
        return torch.linalg.cholesky(inverse, upper=True)
    except torch.linalg.LinAlgError as exc:
        raise SecateursError(f"the calibration Hessian is not positive definite even with damping {damping}; "
                             "use more calibration tokens or a larger damping") from exc


@torch.no_grad()
def obs_prune(weight: torch.Tensor, hessian: torch.Tensor, pattern: Pattern,
              block_size: int = DEFAULT_BLOCK_SIZE, damping: float = DEFAULT_DAMPING) -> ObsResult:
    """Prune ``weight`` to ``pattern`` with SparseGPT's reconstruction; the input is not modified."""
    w = weight.detach().clone().float()
    rows, cols = w.shape
    factor = inverse_hessian_factor(hessian, w, damping)
    mask = torch.zeros_like(w, dtype=torch.bool)
    saliency = torch.zeros_like(w)
    n_m = pattern.nm
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        w_block = w[:, start:end].clone()
        f_block = factor[start:end, start:end]
        diag = torch.diag(f_block)
        errors = torch.zeros_like(w_block)
        block_saliency = w_block.pow(2) / diag.pow(2).unsqueeze(0)
        saliency[:, start:end] = block_saliency
        if n_m is None:
            block_mask = select_mask(block_saliency, Pattern(pattern.target, "matrix"))
        else:
            block_mask = torch.zeros_like(w_block, dtype=torch.bool)
        for i in range(end - start):
            if n_m is not None and i % n_m[1] == 0:
                group = w_block[:, i:i + n_m[1]].pow(2) / diag[i:i + n_m[1]].pow(2).unsqueeze(0)
                block_mask[:, i:i + n_m[1]] = select_mask(group, Pattern(nm=n_m))
            column = w_block[:, i]
            kept = torch.where(block_mask[:, i], torch.zeros_like(column), column)
            err = (column - kept) / f_block[i, i]
            w_block[:, i:] -= err.unsqueeze(1) @ f_block[i, i:].unsqueeze(0)
            w_block[:, i] = kept
            errors[:, i] = err
        w[:, start:end] = w_block
        mask[:, start:end] = block_mask
        w[:, end:] -= errors @ factor[start:end, end:]
    w[mask] = 0
    return ObsResult(w.to(weight.dtype), mask, saliency)
