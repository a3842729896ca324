"""Reports a user can act on: layers named as layers, the search's cost beside the naive one, figures; report.json
read back in every format."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from secateurs import Block, DataSpec, EvalSpec, OutputSpec, SecateursError, prune
from secateurs.reporting.markdown import naive_cost, removed_summary, render_markdown
from secateurs.reporting.plots import plot_report
from secateurs.reporting.report import REPORT_FORMAT, read_report, report_json, write_report
from secateurs.structured.search import _candidates_to_score, block_units
from secateurs import ModelAdapter
from conftest import tiny_model


def _blocks(*names):
    return [Block.parse(name) for name in names]


def test_whole_layers_are_called_layers():
    assert removed_summary(_blocks("mha.1", "mlp.1", "mha.3")) == "1 whole layer and 1 attention block"
    assert removed_summary(_blocks("mha.0", "mlp.0", "mha.2", "mlp.2")) == "2 whole layers"
    assert removed_summary(_blocks("mlp.4", "mlp.5")) == "2 MLP blocks"


def _run(tiny_model_dir, data_dir, out, **options):
    return prune(str(tiny_model_dir), "blockpruner", {"blocks": 3, **options},
                 data=DataSpec(calib="alpaca", samples=20, seqlen=32, data_dir=data_dir),
                 evaluation=EvalSpec(max_windows=2), output=OutputSpec(out), progress=False).report


def test_the_naive_cost_in_the_report_is_what_a_naive_search_costs(tiny_model_dir, data_dir, tmp_path):
    naive = _run(tiny_model_dir, data_dir, tmp_path / "naive", naive=True)
    fast = _run(tiny_model_dir, data_dir, tmp_path / "fast")
    assert naive.removal_order == fast.removal_order
    predicted = naive_cost(fast)
    assert predicted["block_window_evals"] == naive.search_cost["block_window_evals"]
    assert predicted["head_window_evals"] == naive.search_cost["head_window_evals"]
    assert fast.search_cost["block_window_evals"] < predicted["block_window_evals"]
    scored = fast.search_cost["completed"] + fast.search_cost["abandoned"]
    assert scored == _candidates_to_score(block_units(ModelAdapter(tiny_model("llama"))), 3)  # the bar's total
    text = (tmp_path / "fast" / "report.md").read_text()
    assert "| block evaluations |" in text and "naive: a full forward per candidate" in text
    assert f"Removed {removed_summary(fast.removed_blocks)}:" in text
    assert read_report(tmp_path / "fast" / "report.json") == fast  # what was written reads back as it was


def test_unstructured_outputs_show_the_sparsity_of_every_layer(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "wanda"
    prune(str(tiny_model_dir), "wanda", {"sparsity": 0.5}, data=DataSpec(calib="c4", samples=2, seqlen=32,
                                                                          data_dir=data_dir),
          evaluation=EvalSpec(max_windows=1), output=OutputSpec(out), progress=False)
    report = json.loads((out / "report.json").read_text())
    assert len(report["sparsity"]["per_layer"]) == 3 and all(abs(s - 0.5) < 0.02 for s in report["sparsity"]["per_layer"])
    assert report["figures"] == ["sparsity_per_layer.png"] and (out / "sparsity_per_layer.png").stat().st_size > 1000
    assert "![sparsity_per_layer.png](sparsity_per_layer.png)" in (out / "report.md").read_text()


# --- report.json: one writer, one reader, every format --------------------------------------------------
FIXTURES = Path(__file__).parent / "fixtures" / "reports"  # written by the code before format 2 (no "format")


@pytest.mark.parametrize("name", ["structured-v1", "unstructured-v1"])
def test_reports_of_the_first_format_load_render_and_keep_their_keys(name, tmp_path):
    path = FIXTURES / f"{name}.json"
    report = read_report(path)
    assert report.kind == name.split("-")[0] and report.num_layers == 3
    saved = json.loads(path.read_text())
    assert list(report_json(report).items()) == [("format", REPORT_FORMAT), *saved.items()]  # same keys, values, order
    assert render_markdown(report) == (FIXTURES / f"{name}.md").read_text()  # report.md as that code wrote it
    assert plot_report(report, tmp_path) == saved["figures"]
    assert all((tmp_path / figure).read_bytes()[:4] == b"\x89PNG" for figure in saved["figures"])
    write_report(tmp_path / "report.json", report)
    assert read_report(tmp_path / "report.json") == report


def test_a_report_of_an_unknown_format_is_refused_in_one_line(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({**json.loads((FIXTURES / "structured-v1.json").read_text()), "format": 3}))
    with pytest.raises(SecateursError, match="format 3") as refused:
        read_report(path)
    assert "\n" not in str(refused.value)
    path.write_text("{not json")
    with pytest.raises(SecateursError, match="cannot read the report"):
        read_report(path)


def test_importing_secateurs_leaves_matplotlib_backend_alone():
    code = ("import sys, matplotlib, secateurs, secateurs.reporting.plots; "
            "assert 'matplotlib.pyplot' not in sys.modules; print(matplotlib.get_backend())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "MPLBACKEND": "svg"})
    assert done.returncode == 0 and done.stdout.strip() == "svg", done.stderr
