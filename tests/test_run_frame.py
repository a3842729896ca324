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
        prune(str(tiny_model_dir), method, options, data=DataSpec(data_dir=data_dir), progress=False)


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
