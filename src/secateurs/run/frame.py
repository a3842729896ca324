"""The steps every run shares: load, token windows, dense-vs-pruned perplexity, the report frame and
the atomic write of the output directory. The two wings (structured.py, unstructured.py) are built
from these."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, TypeVar

import torch

from ..data import TokenWindows, token_windows
from ..distributed import Ranks
from ..errors import SecateursError
from ..evaluation.perplexity import perplexity
from ..files import Artifact, atomic_directory, check_free_space, save_tensors_atomic, write_text_atomic
from ..models.adapter import ModelAdapter
from ..models.loading import DTYPES, LoadedModel, load_model, load_model_streamed, resolve_device
from ..plan import CPU_RUNTIME_BYTES, GIB, OFFLOAD_CHOSEN, RunShape, choose_offload, load_config, make_plan, parse_bytes
from ..options import as_dict
from ..reporting.markdown import render_markdown
from ..reporting.plots import plot_report
from ..reporting.provenance import environment
from ..resume import Checkpoint
from ..reporting.report import Comparison, Outputs, Report, write_report
from ..resources import peak_memory
from .spec import RECIPE_FILE, RunSpec

R = TypeVar("R", bound=Report)


@dataclass
class PruneResult:
    model: LoadedModel
    removed: list  # the removed blocks (structured methods; empty for unstructured ones)
    report: Report
    main: bool = True  # False on every process of a torchrun launch but rank 0 (which prints and writes)


@dataclass
class Run:
    """A run in progress: its spec, the loaded model with its adapter, and the time each step took."""

    spec: RunSpec
    lm: LoadedModel
    adapter: ModelAdapter
    timings: dict[str, float] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None  # with an output: the completed steps, to resume from (resume.py)

    @classmethod
    def start(cls, spec: RunSpec) -> "Run":
        start = time.perf_counter()
        model = spec.model
        if isinstance(model, str) and spec.method.memory.budget == OFFLOAD_CHOSEN and spec.options.max_memory:
            spec.options = dataclasses.replace(spec.options, offload=offload_for_budget(spec, model))
        if isinstance(model, str):
            device = str(Ranks.device_of_process(resolve_device(spec.device)))  # torchrun on GPUs: one GPU each
            lm = (load_model_streamed(model, dtype=spec.dtype, device=device, work_dir=spec.options.offload_dir)
                  if spec.streams_weights else load_model(model, dtype=spec.dtype, device=device))
        else:
            lm = model
        ranks = Ranks.from_environment(lm.device)
        run = cls(spec, lm, ModelAdapter(lm.model, lm.weights, ranks), {"load_s": time.perf_counter() - start})
        try:
            run._check()
            run.checkpoint = run._open_checkpoint()
        except BaseException:
            run.adapter.weights.close()  # streamed weights: their work directory goes now, not at exit
            raise
        return run

    def _open_checkpoint(self) -> Checkpoint | None:
        """The checkpoint beside the output: its protocol is the run's recipe, the model's source and the
        versions; a run that finds one of its own continues from it (and says so)."""
        spec, ranks = self.spec, self.adapter.ranks
        if spec.output.path is None:
            return None
        protocol = {"recipe": spec.to_recipe(), "processes": ranks.world,
                    "model": {k: v for k, v in self.lm.source.items() if k in ("spec", "sha256", "path", "gguf", "alias")}}
        checkpoint = Checkpoint.open(spec.output.path, protocol, fresh=spec.output.fresh, writer=ranks.main,
                                     rank=ranks.rank)
        if checkpoint.found and spec.progress:
            print(f"resuming from {checkpoint.root}: {', '.join(checkpoint.found)} already done in part "
                  "(--fresh starts over)", file=sys.stderr)
        return checkpoint

    def _check(self) -> None:
        """What can fail on this model, checked before any calibration."""
        spec, lm = self.spec, self.lm
        ranks = self.adapter.ranks
        ranks.check_agree("arguments", spec.to_recipe())
        if not ranks.main:
            spec.progress = False  # one process shows progress and writes
        if spec.output.path is not None:  # the weights' size is known now: refuse a disk too small for them
            params = list(lm.model.parameters())
            weight_bytes = sum(p.numel() * p.element_size() for p in params)
            needed = weight_bytes + spec.output.exporter.extra_bytes(sum(p.numel() for p in params), weight_bytes,
                                                                     spec.output.export_options)
            check_free_space(spec.output.path, needed)
        longest = max(spec.data.seqlen, spec.evaluation.seqlen or 0)
        if longest > self.adapter.max_positions:
            raise SecateursError(f"a window of {longest} tokens is longer than the {self.adapter.max_positions} "
                                 "positions the model was trained for (config max_position_embeddings)")
        if spec.output.path is not None:  # the engine of --format must be able to express the model
            if self.adapter.weights.streamed and not spec.output.exporter.is_checkpoint:
                raise SecateursError(f"--format {spec.output.format} needs the whole model in memory; with --offload "
                                     "disk write --format hf, then `secateurs export DIR --format "
                                     f"{spec.output.format}`")
            spec.output.exporter.check(self.adapter, lm)
        spec.method.check(self.adapter, spec.options)

    @contextlib.contextmanager
    def timed(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = time.perf_counter() - start

    # --- data ------------------------------------------------------------------------------------
    def calibration(self, name: str | None, samples: int | None) -> TokenWindows:
        """Calibration windows of ``name`` (None: the run's set, else the method's default), ``samples``
        documents drawn with the run's seed (None: all of them)."""
        data = self.spec.data
        windows = token_windows(name or data.calib or self.spec.method.default_calibration, self.lm.tokenizer,
                                data.seqlen, data_dir=data.data_dir, samples=samples, seed=data.seed,
                                text_field=data.text_field)
        self.adapter.ranks.check_agree("calibration windows", hashlib.sha256(windows.input_ids.numpy().tobytes()).hexdigest())
        return windows

    def evaluation_windows(self, extra: tuple[str, ...] = ()) -> dict[str, TokenWindows]:
        """Windows of every perplexity set to compare on (the run's, then ``extra`` ones not among them)."""
        ev, data = self.spec.evaluation, self.spec.data
        names = [*ev.ppl, *(name for name in extra if name not in ev.ppl)]
        return {name: token_windows(name, self.lm.tokenizer, ev.seqlen or data.seqlen, data_dir=data.data_dir,
                                    max_windows=ev.max_windows) for name in names}

    def perplexities(self, windows: dict[str, TokenWindows], variant: Callable[[], ContextManager] = contextlib.nullcontext,
                     progress: bool | None = None) -> dict[str, dict[str, Any]]:
        """Perplexity on each window set, inside ``variant`` (e.g. the adapter skipping blocks)."""
        show = self.spec.progress if progress is None else progress
        with variant():
            return {name: perplexity(self.lm.model, w, batch_size=self.spec.evaluation.batch_size, progress=show,
                                     adapter=self.adapter) for name, w in windows.items()}

    # --- report and output -----------------------------------------------------------------------
    def report(self, report_type: type[R], recipe: dict[str, Any] | None = None, **fields: Any) -> R:
        """The report: what every run records around the wing's own ``fields`` (``recipe``: the run's
        options, unless given)."""
        spec = self.spec
        return report_type(
            method=spec.method.name, model=self.lm.source, num_layers=self.adapter.num_layers,
            timings=self.timings, peak_memory=peak_memory(), processes=self.adapter.ranks.world,
            recipe={"method": spec.method.name, **as_dict(spec.options)} if recipe is None else recipe,
            command=spec.output.command, environment=environment(), **fields)

    def write(self, report: Report, save_model: Callable[[Path], dict[str, Any] | None],
              artifacts: list[Artifact] = ()) -> Outputs:
        """Write the model (``save_model(dir)``, which returns the checkpoint's record), figures, artifacts,
        report.json and report.md, atomically; return what was written beside the model."""
        out = self.spec.output
        if not self.adapter.ranks.main:
            return Outputs()  # one process writes the output
        with atomic_directory(out.path, overwrite=out.overwrite) as tmp:
            export = save_model(tmp)  # the adapter now holds the model as saved (blocks removed, layers dropped)
            figures = plot_report(report, tmp)
            engine_export = None
            if not out.exporter.is_checkpoint:
                engine_export = out.exporter.write(self.adapter, self.lm, tmp / out.exporter.inside_pruned_directory,
                                                   out.export_options, name=Path(out.path).name)
            for artifact in artifacts:
                save_tensors_atomic(tmp / artifact.name, artifact.tensors,
                                    {**artifact.metadata, "model": str(self.lm.source.get("spec"))})
            outputs = Outputs(export, engine_export, figures, [a.name for a in artifacts])
            written = dataclasses.replace(report, outputs=outputs)
            write_text_atomic(tmp / RECIPE_FILE, recipe_text(self.spec))
            write_report(tmp / "report.json", written)
            write_text_atomic(tmp / "report.md", render_markdown(written))
        if self.checkpoint is not None:
            self.checkpoint.remove()  # the output is written: nothing is left to resume
        return outputs


def offload_for_budget(spec: RunSpec, model: str) -> str:
    """``--offload`` for ``--max-memory``: the least that `secateurs plan` predicts to fit (say which, and why)."""
    budget = spec.options.max_memory
    config = load_config(model)
    saved = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    dtype = DTYPES.get(spec.dtype if spec.dtype != "auto" else saved, torch.float32)
    shape = RunShape(spec.method.name, spec.method.memory, windows=spec.data.samples or RunShape.windows, seqlen=spec.data.seqlen,
                     batch_size=spec.options.batch_size, dtype_bytes=dtype.itemsize)
    plan = make_plan(config, shape)
    offload = choose_offload(plan, parse_bytes(budget), budget, on_cpu=resolve_device(spec.device).type == "cpu")
    if spec.progress and Ranks.of_launch().main:
        print(f"--max-memory {budget}: predicted peak {plan.peak_bytes / GIB:.2f} GiB in memory"
              + (f", {plan.offloaded_peak_bytes / GIB:.2f} GiB with --offload disk" if plan.offloaded else "")
              + f" (+ about {CPU_RUNTIME_BYTES / GIB:.1f} GiB of runtime on the CPU): --offload {offload}", file=sys.stderr)
    return offload


def recipe_text(spec: RunSpec) -> str:
    """recipe.yaml: the run's every setting, with a first line that says how to run it again."""
    import yaml

    header = f"# secateurs recipe: `secateurs prune --recipe {RECIPE_FILE} --out DIR` runs this again\n"
    return header + yaml.safe_dump(spec.to_recipe(), sort_keys=False)


def compare(dense: dict[str, dict[str, Any]], pruned: dict[str, dict[str, Any]]) -> dict[str, Comparison]:
    """Dense vs pruned perplexity per set, with the protocol of the windows."""
    return {name: Comparison(dense[name]["ppl"], pruned[name]["ppl"], pruned[name]["protocol"]) for name in pruned}
