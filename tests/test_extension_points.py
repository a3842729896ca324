"""Adding a method, a model family, an export format or a task is one new definition plus one
registration line: each is proven here by registering a throw-away one and running it through the CLI.
Also: --max-memory works from the CLI for every method that takes it."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from conftest import TINY
from secateurs import registry
from secateurs.cli import main
from secateurs.evaluation.tasks import MULTIPLE_CHOICE, TASKS, Item, Task
from secateurs.export.exporter import Exporter
from secateurs.export.registry import EXPORTERS
from secateurs.files import write_json_atomic
from secateurs.models import families
from secateurs.models.adapter import Block
from secateurs.plan import BLOCK_SEARCH, PREFIX_CACHE_KEPT, MemoryPolicy
from secateurs.structured.methods import Selection, StructuredMethod, StructuredOptions
from secateurs.structured.search import SearchStep


def _prune(capsys, model_dir, data_dir, *argv):
    capsys.readouterr()
    code = main(["--quiet", "prune", str(model_dir), "--samples", "2", "--seqlen", "32", "--eval-max-windows", "1",
                 "--data-dir", str(data_dir), *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


# --- a method: one class plus registry.register ---------------------------------------------------
class DropLast(StructuredMethod):
    """Drop the last K MLP blocks (a throw-away method for this test)."""

    name = "drop-last-mlp"
    options = StructuredOptions
    memory = MemoryPolicy(BLOCK_SEARCH)
    uses_calibration = False

    def select(self, adapter, windows, options, progress=True):
        removed, steps = [], []
        for layer in reversed(range(adapter.num_layers - options.blocks, adapter.num_layers)):
            removed.append(Block("mlp", layer).name)
            ratio = sum(adapter.block_num_params(Block.parse(n)) for n in removed) / adapter.total_num_params()
            steps.append(SearchStep(len(steps) + 1, removed[-1], [b.name for b in sorted(map(Block.parse, removed))],
                                    0.0, ratio))
        return Selection(steps, {}, "position (last first)")


def test_a_registered_method_runs_through_the_cli(monkeypatch, capsys, tiny_model_dir, data_dir, tmp_path):
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))  # the registration ends with the test
    registry.register(DropLast)
    out = _prune(capsys, tiny_model_dir, data_dir, "--method", "drop-last-mlp", "--blocks", "2",
                 "--out", str(tmp_path / "dropped"))
    assert "drop-last-mlp: removed mlp.2, mlp.1 (in this order)" in out
    report = json.loads((tmp_path / "dropped" / "report.json").read_text())
    assert report["removed_blocks"] == ["mlp.1", "mlp.2"] and report["method"] == "drop-last-mlp"
    capsys.readouterr()
    assert main(["methods"]) == 0 and "drop-last-mlp" in capsys.readouterr().out


def test_a_method_whose_policy_does_not_fit_its_options_is_refused():
    class Streams(DropLast):
        name = "streams"
        memory = MemoryPolicy(BLOCK_SEARCH, streams_weights=True)

    class Budgeted(DropLast):
        name = "budgeted"
        memory = MemoryPolicy(BLOCK_SEARCH, budget=PREFIX_CACHE_KEPT)

    for cls, missing in ((Streams, "OffloadOptions"), (Budgeted, "BudgetOption")):
        with pytest.raises(TypeError, match=missing):
            registry.register(cls)
        assert cls.name not in registry.METHODS


# --- a family: one model_type line in models/families.py -------------------------------------------
class ThrowAwayConfig(LlamaConfig):
    model_type = "secateurs-throwaway"


class ThrowAwayForCausalLM(LlamaForCausalLM):
    config_class = ThrowAwayConfig


def test_a_registered_family_runs_through_the_cli(monkeypatch, capsys, byte_tokenizer, data_dir, tmp_path):
    AutoConfig.register(ThrowAwayConfig.model_type, ThrowAwayConfig, exist_ok=True)
    AutoModelForCausalLM.register(ThrowAwayConfig, ThrowAwayForCausalLM, exist_ok=True)
    path = tmp_path / "throwaway"
    torch.manual_seed(0)
    ThrowAwayForCausalLM(ThrowAwayConfig(**TINY)).save_pretrained(path)
    byte_tokenizer.save_pretrained(path)
    monkeypatch.setitem(families.SUPPORTED_FAMILIES, ThrowAwayConfig.model_type, families.PRE_NORM)
    out = _prune(capsys, path, data_dir, "--method", "blockpruner", "--blocks", "2", "--out", str(tmp_path / "pruned"))
    assert "blockpruner: removed" in out
    report = json.loads((tmp_path / "pruned" / "report.json").read_text())
    assert len(report["removed_blocks"]) == 2


# --- --max-memory from the command line, for every method that takes it ---------------------------
AMOUNT = {"structured": ["--blocks", "1"], "unstructured": ["--sparsity", "0.5"]}
NEEDS = {"dpruner": ["--domain", "healthcare", "--domain-samples", "2"]}


@pytest.mark.parametrize("method", sorted(n for n, cls in registry.METHODS.items() if cls.memory.budget is not None))
def test_max_memory_works_from_the_cli_for_every_method_that_takes_it(method, capsys, tiny_model_dir, data_dir, tmp_path):
    cls = registry.METHODS[method]
    calib = [] if not cls.uses_calibration else ["--calib", "c4" if cls.kind == "unstructured" else "alpaca"]
    out = _prune(capsys, tiny_model_dir, data_dir, "--method", method, *AMOUNT[cls.kind], *calib,
                 *NEEDS.get(method, []), "--max-memory", "8GiB", "--out", str(tmp_path / method))
    report = json.loads((tmp_path / method / "report.json").read_text())
    assert report["recipe"]["max_memory"] == "8GiB" and report["method"] == method
    assert out.strip()


# --- an export format: one Exporter subclass plus one registry entry --------------------------------
class LayerCountExporter(Exporter):
    """Writes one JSON file saying which layers hold which blocks (a throw-away format for this test)."""

    name = "layer-json"
    engine = "a reader of JSON"
    writes_file = True
    inside_pruned_directory = "layers.json"

    def write(self, adapter, lm, path, options, name="pruned", overwrite=False):
        layers = [[not adapter.is_removed(Block(kind, i)) for kind in ("mha", "mlp")] for i in range(adapter.num_layers)]
        write_json_atomic(path, {"name": name, "layers": layers})
        return {"format": self.name, "architecture": "json", "layers": len(layers)}


def test_a_registered_export_format_runs_through_the_cli(monkeypatch, capsys, tiny_model_dir, data_dir, tmp_path):
    monkeypatch.setitem(EXPORTERS, LayerCountExporter.name, LayerCountExporter())
    out = _prune(capsys, tiny_model_dir, data_dir, "--method", "blockpruner", "--blocks", "2", "--calib", "alpaca",
                 "--format", "layer-json", "--out", str(tmp_path / "pruned"))
    assert "layers.json for a reader of JSON" in out
    written = json.loads((tmp_path / "pruned" / "layers.json").read_text())
    assert sum(not kept for layer in written["layers"] for kept in layer) == 2
    capsys.readouterr()
    assert main(["--quiet", "export", str(tmp_path / "pruned"), "--format", "layer-json",
                 "--out", str(tmp_path / "again.json")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "again.json").read_text())["layers"] == written["layers"]


# --- a task: one Task definition plus one registry entry --------------------------------------------
def test_a_registered_task_runs_through_the_cli(monkeypatch, capsys, tiny_model_dir, data_dir, tmp_path):
    rows = tmp_path / "colours.jsonl"
    rows.write_text("".join(json.dumps({"id": i, "q": f"Colour number {i}?", "options": ["red", "green"], "answer": i % 2})
                            + "\n" for i in range(4)))
    task = Task("colours", str(rows), MULTIPLE_CHOICE, "{q} {option}",
                lambda r: Item(str(r["id"]), r["answer"], [r["q"]] * 2, [" " + o for o in r["options"]], r["options"]),
                ("acc", "acc_norm"))
    monkeypatch.setitem(TASKS, task.name, task)
    capsys.readouterr()
    assert main(["--quiet", "eval", str(tiny_model_dir), "--tasks", "colours", "--data-dir", str(data_dir),
                 "--out", str(tmp_path / "results.json")]) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "results.json").read_text())["tasks"]["colours"]
    assert result["n"] == 4 and 0 <= result["metrics"]["acc"] <= 1 and sum(result["predicted"]) == 4
