"""``prune``: check the run, then hand it to its wing (structured or unstructured)."""

from __future__ import annotations

from typing import Any

from ..models.loading import LoadedModel
from .frame import PruneResult
from .spec import DataSpec, EvalSpec, OutputSpec, RunSpec
from .structured import run_structured
from .unstructured import run_unstructured

WINGS = {"structured": run_structured, "unstructured": run_unstructured}


def prune(
    model: str | LoadedModel,
    method: str = "blockpruner",
    options: Any = None,
    data: DataSpec | dict | None = None,
    evaluation: EvalSpec | dict | None = None,
    output: OutputSpec | dict | None = None,
    dtype: str = "auto",
    device: str = "auto",
    progress: bool = True,
) -> PruneResult:
    """Prune ``model`` with ``method``; optionally export it with its report (``output``).

    ``options`` are the method's typed options (``SearchOptions(blocks=6)`` for BlockPruner,
    ``UnstructuredOptions(sparsity=0.5)`` for Wanda, ``DPrunerOptions(...)``; ``secateurs methods`` names
    each method's class) or a dict of them. Structured
    methods remove blocks; unstructured ones zero weights. Everything that can be checked before the
    model loads is checked first.
    """
    return run_spec(RunSpec.build(model, method, options, data, evaluation, output, dtype=dtype, device=device,
                                  progress=progress))


def run_spec(spec: RunSpec) -> PruneResult:
    """Run a checked spec (from :func:`prune`, or from a recipe: ``RunSpec.from_recipe``)."""
    return WINGS[spec.method.kind](spec)
