"""What a run is: a model, a method with its typed options, the data, the evaluation and the output.

``RunSpec.build`` validates everything that can be checked without loading the model (the method,
its options, the domain, the output path), so that a mistake costs a second, not a calibration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..data import domain_sets
from ..errors import SecateursError
from ..evaluation.perplexity import DEFAULT_BATCH_SIZE
from ..files import check_output_path
from ..models.loading import LoadedModel
from ..options import build
from ..registry import get_method, make_options


@dataclass
class DataSpec:
    """Calibration data, and the domain data of domain-specific methods (D-Pruner)."""

    calib: str | None = None  # named set or .txt/.jsonl file; None = the method's default
    samples: int | None = 64  # documents drawn with ``seed``
    seqlen: int = 512
    seed: int = 0
    data_dir: str | os.PathLike | None = None
    text_field: str = "text"
    domain: str | None = None  # healthcare | legal: domain calibration and a held-out domain PPL
    domain_data: str | None = None  # or a file of domain text
    domain_samples: int | None = 64


@dataclass
class EvalSpec:
    """Dense-vs-pruned evaluation after pruning."""

    ppl: Sequence[str] = ("wikitext2",)
    seqlen: int | None = None  # default: the calibration window length
    max_windows: int | None = None  # None: every window of each set
    batch_size: int = DEFAULT_BATCH_SIZE
    speed: bool = False  # decode tokens/s, dense vs pruned (structured methods)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise SecateursError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class OutputSpec:
    """Where the pruned model and its report go (nothing is written without a path)."""

    path: str | os.PathLike | None = None
    overwrite: bool = False
    command: list[str] | None = None  # recorded in the report


@dataclass
class RunSpec:
    model: str | LoadedModel
    method: Any  # a registered method instance (it knows its name and kind)
    options: Any  # the method's typed options
    data: DataSpec = field(default_factory=DataSpec)
    evaluation: EvalSpec = field(default_factory=EvalSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    dtype: str = "auto"
    device: str = "auto"
    progress: bool = True

    @classmethod
    def build(cls, model: str | LoadedModel, method: str, options: Any = None, data: Any = None,
              evaluation: Any = None, output: Any = None, **settings: Any) -> "RunSpec":
        """Check and assemble a run; ``options`` etc. may be the spec objects or plain dicts."""
        chosen = get_method(method)
        spec = cls(model, chosen, make_options(method, options), build(DataSpec, data), build(EvalSpec, evaluation),
                   build(OutputSpec, output), **settings)
        if spec.data.domain is not None:
            domain_sets(spec.data.domain)  # an unknown domain fails here, before loading anything
        if chosen.kind == "structured" and (spec.data.domain or spec.data.domain_data):
            raise SecateursError(f"{method} does not use domain data: drop --domain / --domain-data "
                                 "(measure a domain with --eval-ppl healthcare:test)")
        if spec.evaluation.speed and chosen.kind != "structured":
            raise SecateursError(f"{method} zeros weights, which dense kernels run no faster: drop --speed "
                                 "(secateurs eval DIR --speed measures any model)")
        if chosen.uses_domain_data and spec.data.domain is None and spec.data.domain_data is None:
            raise SecateursError(f"{method} needs domain data: --domain healthcare|legal or --domain-data FILE")
        if spec.output.path is not None:
            check_output_path(spec.output.path, spec.output.overwrite)
        return spec
