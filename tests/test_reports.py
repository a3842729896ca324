"""Reports a user can act on: layers named as layers, the search's cost beside the naive one, figures."""

import json

from secateurs import DataSpec, EvalSpec, OutputSpec, prune
from secateurs.reporting.markdown import naive_cost, removed_summary
from secateurs.structured.search import _candidates_to_score, block_units
from secateurs import ModelAdapter
from conftest import tiny_model


def test_whole_layers_are_called_layers():
    assert removed_summary(["mha.1", "mlp.1", "mha.3"]) == "1 whole layer and 1 attention block"
    assert removed_summary(["mha.0", "mlp.0", "mha.2", "mlp.2"]) == "2 whole layers"
    assert removed_summary(["mlp.4", "mlp.5"]) == "2 MLP blocks"


def _run(tiny_model_dir, data_dir, out, **options):
    return prune(str(tiny_model_dir), "blockpruner", {"blocks": 3, **options},
                 data=DataSpec(calib="alpaca", samples=20, seqlen=32, data_dir=data_dir),
                 evaluation=EvalSpec(max_windows=2), output=OutputSpec(out), progress=False).report


def test_the_naive_cost_in_the_report_is_what_a_naive_search_costs(tiny_model_dir, data_dir, tmp_path):
    naive = _run(tiny_model_dir, data_dir, tmp_path / "naive", naive=True)
    fast = _run(tiny_model_dir, data_dir, tmp_path / "fast")
    assert naive["removal_order"] == fast["removal_order"]
    predicted = naive_cost(fast)
    assert predicted["block_window_evals"] == naive["search_cost"]["block_window_evals"]
    assert predicted["head_window_evals"] == naive["search_cost"]["head_window_evals"]
    assert fast["search_cost"]["block_window_evals"] < predicted["block_window_evals"]
    scored = fast["search_cost"]["completed"] + fast["search_cost"]["abandoned"]
    assert scored == _candidates_to_score(block_units(ModelAdapter(tiny_model("llama"))), 3)  # the bar's total
    text = (tmp_path / "fast" / "report.md").read_text()
    assert "| block evaluations |" in text and "naive: a full forward per candidate" in text
    assert f"Removed {removed_summary(fast['removed_blocks'])}:" in text


def test_unstructured_outputs_show_the_sparsity_of_every_layer(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "wanda"
    prune(str(tiny_model_dir), "wanda", {"sparsity": 0.5}, data=DataSpec(calib="c4", samples=2, seqlen=32,
                                                                          data_dir=data_dir),
          evaluation=EvalSpec(max_windows=1), output=OutputSpec(out), progress=False)
    report = json.loads((out / "report.json").read_text())
    assert len(report["sparsity"]["per_layer"]) == 3 and all(abs(s - 0.5) < 0.02 for s in report["sparsity"]["per_layer"])
    assert report["figures"] == ["sparsity_per_layer.png"] and (out / "sparsity_per_layer.png").stat().st_size > 1000
    assert "![sparsity_per_layer.png](sparsity_per_layer.png)" in (out / "report.md").read_text()
