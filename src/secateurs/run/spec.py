"""What a run is: a model, a method with its typed options, the data, the evaluation and the output.

``RunSpec.build`` validates everything that can be checked without loading the model (the method,
its options, the domain, the output path), so that a mistake costs a second, not a calibration.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..version import __version__
from ..data import check_source, domain_sets
from ..errors import SecateursError
from ..export.exporter import Exporter
from ..export.registry import DEFAULT_FORMAT, export_options, get_exporter, option_fields
from ..defaults import BATCH_SIZE, CALIBRATION_SAMPLES, CALIBRATION_SEQLEN, EVAL_WINDOWS
from ..files import check_output_path
from ..models.loading import LoadedModel
from ..options import build
from ..registry import get_method, make_options


@dataclass
class DataSpec:
    """Calibration data, and the domain data of domain-specific methods (D-Pruner)."""

    calib: str | None = None  # named set or .txt/.jsonl file; None = the method's default
    samples: int | None = CALIBRATION_SAMPLES  # documents drawn with ``seed``
    seqlen: int = CALIBRATION_SEQLEN
    seed: int = 0
    data_dir: str | os.PathLike | None = None
    text_field: str = "text"
    domain: str | None = None  # healthcare | legal: domain calibration and a held-out domain PPL
    domain_data: str | None = None  # or a file of domain text
    domain_samples: int | None = CALIBRATION_SAMPLES

    def __post_init__(self) -> None:
        if self.seqlen < 2:
            raise SecateursError(f"--seqlen must be at least 2 tokens, got {self.seqlen}")
        if self.seed < 0:
            raise SecateursError(f"--seed must be 0 or more, got {self.seed}")
        for flag, value in (("--samples", self.samples), ("--domain-samples", self.domain_samples)):
            if value is not None and value < 1:
                raise SecateursError(f"{flag} must be at least 1, got {value}")


@dataclass
class EvalSpec:
    """Dense-vs-pruned evaluation after pruning."""

    ppl: Sequence[str] = ("wikitext2",)
    seqlen: int | None = None  # default: the calibration window length
    max_windows: int | None = EVAL_WINDOWS  # None: every window of each set
    batch_size: int = BATCH_SIZE
    speed: bool = False  # decode tokens/s, dense vs pruned (structured methods)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise SecateursError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.seqlen is not None and self.seqlen < 2:
            raise SecateursError(f"--eval-seqlen must be at least 2 tokens, got {self.seqlen}")
        if self.max_windows is not None and self.max_windows < 1:
            raise SecateursError(f"--eval-max-windows must be at least 1, got {self.max_windows}")


@dataclass
class OutputSpec:
    """Where the pruned model and its report go (nothing is written without a path)."""

    path: str | os.PathLike | None = None
    overwrite: bool = False
    command: list[str] | None = None  # recorded in the report
    format: str = DEFAULT_FORMAT  # hf; an engine format (export/registry.py) is also written beside the checkpoint
    gguf_type: str = "f32"  # the formats' options, one field each, named as their options classes name them
    fresh: bool = False  # discard a checkpoint of this output (resume.py) instead of resuming from it

    def __post_init__(self) -> None:
        self.export_options  # an unknown format or option value fails here
        if not self.exporter.is_checkpoint and self.path is None:
            raise SecateursError(f"--format {self.format} writes into --out: say where")

    @property
    def exporter(self) -> Exporter:
        return get_exporter(self.format)

    @property
    def export_options(self) -> Any:
        """The format's typed options, from the fields of the same names."""
        names = {f.name for _, f in option_fields()}
        return export_options(self.format, {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                            if f.name in names})


RECIPE_FILE = "recipe.yaml"
RECIPE_KEYS = {"secateurs", "model", "method", "options", "data", "evaluation", "dtype", "device"}


def plain(settings: Any) -> dict[str, Any]:
    """A dataclass's fields as YAML-friendly values (paths as text, N:M as ``"2:4"``, sequences as lists)."""
    out = {}
    for name, value in dataclasses.asdict(settings).items():
        if isinstance(value, os.PathLike):
            value = str(value)
        elif isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
            value = f"{value[0]}:{value[1]}"
        elif isinstance(value, (tuple, list)):
            value = list(value)
        out[name] = value
    return out


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
        if not chosen.uses_calibration and spec.data.calib is not None:
            raise SecateursError(f"{method} uses no calibration data: drop --calib")
        if chosen.uses_domain_data and spec.data.domain is None and spec.data.domain_data is None:
            raise SecateursError(f"{method} needs domain data: --domain healthcare|legal or --domain-data FILE")
        for source in spec.sources():  # every data set named, found before the model loads
            check_source(source, spec.data.data_dir)
        if spec.output.path is not None:
            check_output_path(spec.output.path, spec.output.overwrite)
        return spec

    @property
    def streams_weights(self) -> bool:
        """``--offload disk`` for a method that works one layer at a time: the weights stay in their files."""
        return self.method.memory.streams_weights and self.options.offload == "disk"

    # --- recipes: every setting of a run in one YAML file -------------------------------------------------
    def to_recipe(self) -> dict[str, Any]:
        """The run as a recipe: what ``secateurs prune --recipe FILE --out DIR`` needs to run it again."""
        model = self.model if isinstance(self.model, str) else self.model.source.get("spec")
        if Path(model).expanduser().exists():  # a local path: from anywhere, the recipe means this one
            model = str(Path(model).expanduser().resolve())
        return {"secateurs": __version__, "model": model, "method": self.method.name,
                "options": plain(self.options), "data": plain(self.data), "evaluation": plain(self.evaluation),
                "dtype": self.dtype, "device": self.device}

    @classmethod
    def from_recipe(cls, path: str | os.PathLike, model: str | None = None, output: OutputSpec | None = None,
                    progress: bool = True) -> "RunSpec":
        """A run from a recipe file (``model`` replaces the recipe's); unknown keys are refused."""
        import yaml

        try:
            recipe = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise SecateursError(f"cannot read the recipe {path}: {str(exc).splitlines()[0]}") from exc
        if not isinstance(recipe, dict):
            raise SecateursError(f"the recipe {path} is not a mapping of settings")
        unknown = sorted(set(recipe) - RECIPE_KEYS)
        if unknown:
            raise SecateursError(f"the recipe {path} has an unknown key '{unknown[0]}'; known: {', '.join(sorted(RECIPE_KEYS))}")
        for key in ("model", "method"):
            if not recipe.get(key) and not (key == "model" and model):
                raise SecateursError(f"the recipe {path} does not say which {key} to use")
        method = str(recipe["method"])
        try:  # the recipe's own settings, each checked for its type: a mistake names the recipe
            options = make_options(method, recipe.get("options"))
            data, evaluation = build(DataSpec, recipe.get("data")), build(EvalSpec, recipe.get("evaluation"))
        except SecateursError as exc:
            raise SecateursError(f"the recipe {path}: {exc}") from exc
        return cls.build(model or str(recipe["model"]), method, options, data, evaluation, output,
                         dtype=str(recipe.get("dtype", "auto")), device=str(recipe.get("device", "auto")),
                         progress=progress)

    def domain_sets(self) -> tuple[str | None, str | None]:
        """(domain calibration, held-out domain evaluation) of the run, where it has them."""
        data = self.data
        calib, held_out = domain_sets(data.domain) if data.domain is not None else (None, None)
        return data.domain_data or calib, held_out

    def sources(self) -> list[str]:
        """Every data set the run reads: calibration, domain calibration, evaluation."""
        method, domain_calib, held_out = self.method, *self.domain_sets()
        names = [self.data.calib or method.default_calibration] if method.uses_calibration else []
        names += [domain_calib] if method.uses_domain_data and domain_calib else []
        return names + [*self.evaluation.ppl, *([held_out] if held_out else [])]
