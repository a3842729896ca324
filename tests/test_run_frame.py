"""The run frame: methods paired with typed options, the CLI built from them, checks before calibration."""

import dataclasses

import pytest

from conftest import cli_error as _err
from secateurs import DataSpec, SearchOptions, SecateursError, StructuredOptions, prune
from secateurs.cli import build_parser
from secateurs.options import flag_of
from secateurs.registry import METHODS, make_options


def test_every_method_knows_its_name_and_options_and_every_option_is_a_flag():
    prune_parser = build_parser()._subparsers._group_actions[0].choices["prune"]
    flags = {flag for action in prune_parser._actions for flag in action.option_strings}
    for name, cls in METHODS.items():
        assert cls.name == name and cls.kind in ("structured", "unstructured")
        assert dataclasses.is_dataclass(cls.options)
        for f in dataclasses.fields(cls.options):
            assert f.metadata.get("help"), f"{cls.options.__name__}.{f.name} has no help"
            assert flag_of(f) in flags or f.metadata.get("run_level"), flag_of(f)


def test_an_option_the_method_does_not_take_is_one_clear_error(capsys, tiny_model_dir, data_dir):
    base = ["prune", str(tiny_model_dir), "--data-dir", str(data_dir), "--seqlen", "32", "--samples", "5"]
    assert "--blocks is not an option of wanda" in _err(capsys, *base, "--method", "wanda", "--sparsity", "0.5",
                                                        "--blocks", "2")
    assert "--dpruner-lambda is not an option of sparsegpt" in _err(capsys, *base, "--method", "sparsegpt",
                                                                     "--sparsity", "0.5", "--dpruner-lambda", "1")
    assert "--unit is not an option of blockpruner" in _err(capsys, *base, "--blocks", "1", "--unit", "block")
    assert "--sparsity is not an option of blockpruner" in _err(capsys, *base, "--blocks", "1", "--sparsity", "0.5")
    assert "magnitude uses no calibration data" in _err(capsys, *base, "--method", "magnitude", "--sparsity", "0.5",
                                                        "--calib", "c4")
    with pytest.raises(SecateursError, match="wanda: UnstructuredOptions has no setting 'blocks'"):
        make_options("wanda", {"sparsity": 0.5, "blocks": 2})


@pytest.mark.parametrize("method,options,message", [
    ("sparsegpt", {"sparsity": 0.5, "group": "row"}, "not supported for it"),
    ("wanda", {"sparsity": 0.95, "sparsity_of": "all"}, "needs more than all"),
    ("blockpruner", {"blocks": 999}, "more than the"),
    ("layer-search", {"blocks": 4}, "more than the 3 candidate units"),
])
def test_what_can_fail_on_the_model_fails_before_any_calibration(method, options, message, tiny_model_dir, data_dir,
                                                                 monkeypatch):
    import secateurs.run.frame as frame

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration data was read before the check")

    monkeypatch.setattr(frame, "token_windows", no_calibration)
    with pytest.raises(SecateursError, match=message):
        prune(str(tiny_model_dir), method, options, data=DataSpec(seqlen=32, data_dir=data_dir), progress=False)


def test_specs_given_as_dicts_are_checked_and_parsed():
    with pytest.raises(SecateursError, match="DataSpec has no setting 'sample'"):
        prune("unused", "blockpruner", {"blocks": 1}, data={"sample": 3})
    assert make_options("wanda", {"nm": "2:4"}).nm == (2, 4)  # strings go through the field's parser
    with pytest.raises(SecateursError, match="--nm must look like N:M"):
        make_options("wanda", {"nm": "half"})
    promoted = make_options("blockpruner", StructuredOptions(blocks=6))  # a base class's instance is promoted
    assert isinstance(promoted, SearchOptions) and promoted.blocks == 6 and promoted.naive is False


def test_structured_methods_refuse_domain_data_they_would_ignore(capsys, tiny_model_dir, data_dir):
    err = _err(capsys, "prune", str(tiny_model_dir), "--blocks", "1", "--domain", "healthcare", "--data-dir", str(data_dir))
    assert "blockpruner does not use domain data" in err


def test_every_pruned_directory_holds_a_recipe_that_runs_it_again(capsys, tiny_model_dir, data_dir, tmp_path):
    import json

    import torch
    import yaml
    from transformers import AutoModelForCausalLM

    from secateurs.cli import main

    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["--quiet", "prune", str(tiny_model_dir), "--method", "wanda", "--nm", "2:4", "--calib", "c4",
                 "--samples", "2", "--seqlen", "32", "--eval-max-windows", "1", "--data-dir", str(data_dir),
                 "--out", str(first)]) == 0
    recipe = yaml.safe_load((first / "recipe.yaml").read_text())
    assert recipe["method"] == "wanda" and recipe["options"]["nm"] == "2:4" and recipe["data"]["calib"] == "c4"
    assert main(["--quiet", "prune", "--recipe", str(first / "recipe.yaml"), "--out", str(again)]) == 0
    a, b = AutoModelForCausalLM.from_pretrained(first), AutoModelForCausalLM.from_pretrained(again)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    reports = [json.loads((d / "report.json").read_text()) for d in (first, again)]
    assert reports[0]["evaluation"]["wikitext2"]["pruned_ppl"] == reports[1]["evaluation"]["wikitext2"]["pruned_ppl"]


def test_a_recipe_is_validated_before_anything_runs(capsys, tiny_model_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {tiny_model_dir}\nmethod: blockpruner\noptions: {{blocks: 1}}\nbatch: 3\n")
    assert "unknown key 'batch'" in _err(capsys, "prune", "--recipe", str(recipe))
    recipe.write_text(f"model: {tiny_model_dir}\nmethod: blockpruner\noptions: {{blocks: 1, naiv: true}}\n")
    assert "SearchOptions has no setting 'naiv'" in _err(capsys, "prune", "--recipe", str(recipe))
    recipe.write_text(f"model: {tiny_model_dir}\nmethod: blockpruner\noptions: {{blocks: 1}}\n")
    assert "--seqlen cannot be combined with --recipe" in _err(capsys, "prune", "--recipe", str(recipe), "--seqlen", "64")
    recipe.write_text("model: [unclosed\n")
    assert "cannot read the recipe" in _err(capsys, "prune", "--recipe", str(recipe))
