"""What a run produced, typed: the report of a structured or an unstructured run, and what was written.

``write_report`` writes report.json and ``read_report`` reads it back. Its keys are flat (the frame, the
wing's result and the outputs side by side) and have not changed since the first format, which had no
``"format"`` field; format 2 adds it. The model's layer count has no key of its own: report.json holds
it as ``export.original_num_layers`` (structured runs) and as the length of ``sparsity.per_layer``
(unstructured runs).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import SecateursError
from ..files import write_json_atomic
from ..models.adapter import Block
from ..structured.search import SearchStep

REPORT_FORMAT = 2
FORMATS_READ = (1, 2)  # 1: report.json without a "format" field


@dataclass
class Comparison:
    """One evaluation set: the perplexity of the dense and of the pruned model on the same windows."""

    dense_ppl: float
    pruned_ppl: float
    protocol: dict[str, Any]  # how the windows were made (TokenWindows.protocol)
    role: str | None = None  # unstructured runs: "general", or "domain" for the domain's evaluation set

    def to_json(self) -> dict[str, Any]:
        entry = {"dense_ppl": self.dense_ppl, "pruned_ppl": self.pruned_ppl, "protocol": self.protocol}
        return entry if self.role is None else {**entry, "role": self.role}


@dataclass
class Outputs:
    """What the write step put beside the model's weights (nothing when no directory was written)."""

    export: dict[str, Any] | None = None  # the checkpoint's record (structured runs; config.json has it too)
    engine_export: dict[str, Any] | None = None  # what --format gguf / nemotron-nas wrote
    figures: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**({"export": self.export} if self.export is not None else {}),
                **({"figures": self.figures} if self.figures else {}),
                **({"engine_export": self.engine_export} if self.engine_export is not None else {}),
                **({"artifacts": self.artifacts} if self.artifacts else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Outputs":
        return cls(data.get("export"), data.get("engine_export"), data.get("figures", []), data.get("artifacts", []))


@dataclass(kw_only=True)
class Report:
    """What every run records: the frame around a wing's result (``StructuredReport``, ``UnstructuredReport``)."""

    kind: ClassVar[str]
    method: str
    model: dict[str, Any]  # where the model came from (LoadedModel.source)
    num_layers: int  # the model's decoder layers before pruning
    evaluation: dict[str, Comparison]
    timings: dict[str, float]  # seconds per step
    peak_memory: dict[str, float]
    processes: int
    recipe: dict[str, Any]
    command: list[str] | None
    environment: dict[str, Any]  # package versions and the machine
    outputs: Outputs = field(default_factory=Outputs)

    def result_json(self) -> dict[str, Any]:
        """The wing's own keys, in report.json's order."""
        raise NotImplementedError

    @classmethod
    def result_from_json(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The wing's own fields (and the layer count) from report.json's content."""
        raise NotImplementedError


@dataclass
class CalibrationPerplexity:
    """Perplexity on the calibration windows: of the dense model, and after every step of the search."""

    dense_ppl: float
    ppl_per_step: list[float]
    protocol: dict[str, Any]


@dataclass(kw_only=True)
class StructuredReport(Report):
    """Blocks removed, in order, with the search that chose them."""

    kind: ClassVar[str] = "structured"
    score: str  # what the search minimised
    search: str  # how it compared candidates (exact, or the approximation used); "" when re-applied
    dense_params: int
    pruned_params: int
    ratio: float  # of all parameters removed
    removed_blocks: list[Block]  # sorted
    removal_order: list[str]  # the units removed, one per step ("layer.3", "mha.5")
    steps: list[SearchStep]
    calibration: CalibrationPerplexity
    speed: dict[str, Any] | None  # decode speed, dense and pruned (--speed)
    search_cost: dict[str, int]  # {} for a saved search re-applied

    def result_json(self) -> dict[str, Any]:
        return {"score": self.score, "search": self.search, "dense_params": self.dense_params,
                "pruned_params": self.pruned_params, "ratio": self.ratio,
                "removed_blocks": [b.name for b in self.removed_blocks], "removal_order": self.removal_order,
                "steps": [asdict(s) for s in self.steps], "calibration": asdict(self.calibration),
                "evaluation": _evaluation_json(self.evaluation), "speed": self.speed, "search_cost": self.search_cost}

    @classmethod
    def result_from_json(cls, data: dict[str, Any]) -> dict[str, Any]:
        return dict(score=data["score"], search=data.get("search", ""), dense_params=data["dense_params"],
                    pruned_params=data["pruned_params"], ratio=data["ratio"],
                    removed_blocks=[Block.parse(n) for n in data["removed_blocks"]],
                    removal_order=data["removal_order"], steps=[SearchStep(**s) for s in data["steps"]],
                    calibration=CalibrationPerplexity(**data["calibration"]), speed=data.get("speed"),
                    search_cost=data.get("search_cost") or {}, num_layers=data["export"]["original_num_layers"])


@dataclass
class CalibrationProtocols:
    """The windows an unstructured method was calibrated on, and how the layers were calibrated."""

    general: dict[str, Any] | None
    domain: dict[str, Any] | None
    domain_name: str | None
    sequential: str


@dataclass(kw_only=True)
class UnstructuredReport(Report):
    """Weights set to zero, with the sparsity reached."""

    kind: ClassVar[str] = "unstructured"
    details: dict[str, Any]  # the method's own record (pattern, score, notes, ...)
    sparsity: dict[str, Any]  # achieved, counted (unstructured.methods.sparsity_report)
    calibration: CalibrationProtocols

    def result_json(self) -> dict[str, Any]:
        return {"details": self.details, "sparsity": self.sparsity, "calibration": asdict(self.calibration),
                "evaluation": _evaluation_json(self.evaluation)}

    @classmethod
    def result_from_json(cls, data: dict[str, Any]) -> dict[str, Any]:
        return dict(details=data["details"], sparsity=data["sparsity"],
                    calibration=CalibrationProtocols(**data["calibration"]),
                    num_layers=len(data["sparsity"]["per_layer"]))


REPORT_TYPES: dict[str, type[Report]] = {"structured": StructuredReport, "unstructured": UnstructuredReport}


def _evaluation_json(evaluation: dict[str, Comparison]) -> dict[str, Any]:
    return {name: comparison.to_json() for name, comparison in evaluation.items()}


def report_json(report: Report) -> dict[str, Any]:
    """report.json's content."""
    return {"format": REPORT_FORMAT, "kind": report.kind, "method": report.method, "model": report.model,
            **report.result_json(),
            "timings": report.timings, "peak_memory": report.peak_memory, "processes": report.processes,
            "recipe": report.recipe, "command": report.command, "environment": report.environment,
            **report.outputs.to_json()}


def report_from_json(data: dict[str, Any]) -> Report:
    """The typed report of report.json's content (any format in ``FORMATS_READ``)."""
    report_type = REPORT_TYPES.get(data.get("kind"))
    if report_type is None:
        raise ValueError(f"kind {data.get('kind')!r} is neither structured nor unstructured")
    return report_type(
        method=data["method"], model=data["model"],
        evaluation={name: Comparison(**entry) for name, entry in data["evaluation"].items()},
        timings=data["timings"], peak_memory=data["peak_memory"], processes=data.get("processes", 1),
        recipe=data["recipe"], command=data.get("command"), environment=data["environment"],
        outputs=Outputs.from_json(data), **report_type.result_from_json(data))


def write_report(path: str | os.PathLike, report: Report) -> Path:
    """Write report.json, atomically."""
    return write_json_atomic(path, report_json(report))


def read_report(path: str | os.PathLike) -> Report:
    """The report a run wrote to ``path`` (report.json); one line of error if it cannot be read."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SecateursError(f"cannot read the report {path}: {exc}") from exc
    version = data.get("format", 1) if isinstance(data, dict) else 1
    if version not in FORMATS_READ:
        raise SecateursError(f"{path} is a report of format {version!r}; this secateurs reads formats "
                             f"{', '.join(map(str, FORMATS_READ))} (a newer secateurs wrote it?)")
    try:
        return report_from_json(data)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        what = f"no {exc} entry" if isinstance(exc, KeyError) else str(exc)
        raise SecateursError(f"cannot read the report {path}: {what}") from exc
