"""The defects a probe of 122 careless-operator cases found (issue 23), each refused in one line, early."""

import json
import os

import pytest
import torch
import yaml

from conftest import cli_error, tiny_model
from secateurs.cli import main
from secateurs.files import atomic_directory
from secateurs.models import loading

TINY_PRUNE = ["--method", "blockpruner", "--blocks", "1", "--calib", "alpaca", "--samples", "2", "--seqlen", "16",
              "--eval-max-windows", "1"]


def _prune(capsys, model, data_dir, *argv):
    capsys.readouterr()
    code = main(["--quiet", "prune", str(model), *TINY_PRUNE, "--data-dir", str(data_dir), *argv])
    assert code == 0, capsys.readouterr().err


def _no_load(monkeypatch):
    """Any model load fails the test: the error must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")
    monkeypatch.setattr(loading, "_from_pretrained", refuse)


def test_pickled_weights_are_refused(tmp_path, byte_tokenizer, capsys):
    path = tmp_path / "pickled"
    model = tiny_model("llama")
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")  # what older checkpoints hold
    byte_tokenizer.save_pretrained(path)
    err = cli_error(capsys, "eval", str(path), "--ppl", "wikitext2")
    assert "holds its weights as pickles (pytorch_model.bin)" in err and "safetensors" in err


def test_a_directory_without_a_tokenizer_or_with_a_wrong_config_says_what_is_wrong(tiny_model_dir, capsys):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tiny_model_dir / name).unlink(missing_ok=True)
    assert "has no tokenizer: none of tokenizer.json" in cli_error(capsys, "eval", str(tiny_model_dir))


def test_a_config_that_does_not_fit_the_weights_names_the_weight(tiny_model_dir, capsys):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (tiny_model_dir / "config.json").write_text(json.dumps({**config, "hidden_size": 32}))
    err = cli_error(capsys, "eval", str(tiny_model_dir))
    assert "has shape [260, 64] in model.safetensors, but config.json makes it [260, 32]" in err
    assert "above report" not in err


def test_non_utf8_data_is_named_by_file_and_line_before_the_model_loads(tiny_model_dir, data_dir, tmp_path, capsys,
                                                                       monkeypatch):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("a first line of text\ncaf\xe9 au lait\n".encode("latin-1"))
    _no_load(monkeypatch)
    err = cli_error(capsys, "prune", str(tiny_model_dir), "--method", "wanda", "--sparsity", "0.5", "--calib", str(latin),
                    "--data-dir", str(data_dir))
    assert f"{latin}:2: not UTF-8 text (byte 0xe9 at column 4)" in err


def test_overwrite_of_a_regular_file_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out"
    target.write_text("an old file")
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert target.is_dir() and (target / "new.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("out", [".", "..", "dangling"])
def test_an_output_that_cannot_be_replaced_is_refused_before_the_work(out, tiny_model_dir, data_dir, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    _no_load(monkeypatch)
    err = cli_error(capsys, "prune", str(tiny_model_dir), *TINY_PRUNE, "--data-dir", str(data_dir), "--out", out,
                    "--overwrite")
    assert ("which does not exist" if out == "dangling" else "name a new file or directory") in err


def test_a_negative_seed_is_refused(tiny_model_dir, data_dir, capsys, monkeypatch):
    _no_load(monkeypatch)
    assert "--seed must be 0 or more, got -1" in cli_error(capsys, "prune", str(tiny_model_dir), *TINY_PRUNE,
                                                           "--seed", "-1", "--data-dir", str(data_dir))


@pytest.mark.parametrize("section,setting,value,message", [
    ("data", "samples", "two", "'samples' must be an integer or empty, got 'two'"),
    ("options", "blocks", "1", "'blocks' must be an integer or empty, got '1'"),
])
def test_recipe_values_of_the_wrong_type_are_one_line(section, setting, value, message, tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": "smollm2-135m", "method": "blockpruner",
                                      "options": {"blocks": 1}, section: {setting: value}}))
    _no_load(monkeypatch)
    err = cli_error(capsys, "prune", "--recipe", str(recipe), "--out", str(tmp_path / "out"))
    assert f"the recipe {recipe}:" in err and message in err


def test_a_recipe_runs_from_another_directory(tiny_model_dir, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tiny_model_dir.parent)
    _prune(capsys, tiny_model_dir.name, data_dir, "--out", str(tmp_path / "first"))
    recipe = yaml.safe_load((tmp_path / "first" / "recipe.yaml").read_text())
    assert recipe["model"] == str(tiny_model_dir.resolve())
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["--quiet", "prune", "--recipe", "first/recipe.yaml", "--out", "second"]) == 0
    first, second = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("first", "second"))
    assert first["removal_order"] == second["removal_order"]


def test_hub_kernels_stay_off_unless_asked(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        seen.append(kwargs.get("use_kernels"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    lm = loading.load_model(str(tiny_model_dir))
    assert seen == [False] and not getattr(lm.model, "_use_kernels", False)
    assert not any(type(m).__module__.startswith("kernels") for m in lm.model.modules())
    monkeypatch.setenv(loading.HUB_KERNELS_ENV, "1")
    assert loading.hub_kernels()


def test_eval_checks_positions_data_and_output_before_the_work(tiny_model_dir, data_dir, tmp_path, capsys, monkeypatch):
    model = str(tiny_model_dir)
    err = cli_error(capsys, "eval", model, "--ppl", "wikitext2", "--seqlen", "100000", "--max-windows", "1",
                    "--data-dir", str(data_dir))
    assert "--seqlen 100000 is longer than the 256 positions the model was trained for" in err
    _no_load(monkeypatch)
    assert "unknown dataset 'wikitext3'" in cli_error(capsys, "eval", model, "--ppl", "wikitext3", "--data-dir", str(data_dir))
    assert "data file not found" in cli_error(capsys, "eval", model, "--ppl", str(tmp_path / "missing.txt"))
    (tmp_path / "results.json").write_text("{}")
    assert "already exists" in cli_error(capsys, "eval", model, "--out", str(tmp_path / "results.json"),
                                         "--data-dir", str(data_dir))
    assert "--seed must be 0 or more" in cli_error(capsys, "eval", model, "--tasks", "piqa", "--sample", "2",
                                                   "--seed", "-1", "--data-dir", str(data_dir))


def test_a_file_export_over_a_directory_is_refused_before_the_conversion(tiny_model_dir, data_dir, tmp_path, capsys,
                                                                         monkeypatch):
    _prune(capsys, tiny_model_dir, data_dir, "--out", str(tmp_path / "pruned"))
    (tmp_path / "taken").mkdir()
    _no_load(monkeypatch)
    err = cli_error(capsys, "export", str(tmp_path / "pruned"), "--format", "gguf", "--out", str(tmp_path / "taken"),
                    "--overwrite")
    assert "is a directory, and --format gguf writes one file" in err


def test_from_report_refuses_another_model_and_recomputes_the_ratio(tiny_model_dir, byte_tokenizer, data_dir, tmp_path,
                                                                    capsys):
    _prune(capsys, tiny_model_dir, data_dir, "--out", str(tmp_path / "searched"))
    saved = tmp_path / "searched" / "report.json"
    other = tmp_path / "four-layers"
    from transformers import AutoModelForCausalLM
    from conftest import tiny_config

    config = tiny_config("llama")
    config.num_hidden_layers = 4
    AutoModelForCausalLM.from_config(config).save_pretrained(other)
    byte_tokenizer.save_pretrained(other)
    err = cli_error(capsys, "prune", str(other), "--method", "blockpruner", "--from-report", str(saved), "--calib", "alpaca",
                    "--samples", "2", "--seqlen", "16", "--eval-max-windows", "1", "--data-dir", str(data_dir))
    assert "is the search of another model" in err and "decoder layers: 3 there, 4 here" in err
    _prune(capsys, tiny_model_dir, data_dir, "--from-report", str(saved), "--out", str(tmp_path / "again"))
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["ratio"] == json.loads(saved.read_text())["ratio"] and again["steps"][0]["ratio"] == again["ratio"]
