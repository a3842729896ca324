"""Failures are one clear line, found before the work starts, and leave nothing half-written.

SIGTERM and concurrent writers are tested with real processes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import cli_error as _err
from secateurs import DataSpec, SecateursError, load_model, prune
from secateurs.files import atomic_directory

SMALL = ["--samples", "5", "--seqlen", "32", "--eval-max-windows", "1"]


def _no_calibration(monkeypatch):
    import secateurs.run.frame as frame

    def refuse(*args, **kwargs):
        raise AssertionError("calibration data was read before the check")

    monkeypatch.setattr(frame, "token_windows", refuse)


def _no_loading(monkeypatch):
    import secateurs.run.frame as frame

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(frame, "load_model", refuse)


# --- 1. code shipped with a model never runs -----------------------------------------------------
def test_a_model_directory_that_ships_code_is_refused_and_its_code_never_runs(capsys, tiny_model_dir, data_dir,
                                                                              tmp_path):
    marker = tmp_path / "the-code-ran"
    (tiny_model_dir / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                              "from transformers import LlamaConfig as CustomConfig\n")
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"}
    (tiny_model_dir / "config.json").write_text(json.dumps(config))
    err = _err(capsys, "eval", str(tiny_model_dir), "--data-dir", str(data_dir), "--max-windows", "1")
    assert "asks to run its own code" in err and "auto_map" in err
    assert not marker.exists()


# --- 2. SIGTERM -------------------------------------------------------------------------------------
SLOW_SAVE = r"""
import sys, time
import secateurs.reporting.report as report
from secateurs.cli import main
real = report.write_json_atomic
def slow(path, data):
    real(path, data)  # report.json is written inside the temporary directory ...
    print("writing", flush=True)
    time.sleep(120)  # ... and the process is terminated before the rename
report.write_json_atomic = slow
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_a_save_is_one_line_and_leaves_nothing_behind(tiny_model_dir, data_dir, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    out = runs / "pruned"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, "--quiet", "prune", str(tiny_model_dir), "--blocks", "1",
                             *SMALL, "--data-dir", str(data_dir), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
        assert any(p.name.endswith(".tmp") for p in runs.iterdir())  # the partial output exists now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    finally:
        proc.kill()
    err = proc.stderr.read().strip()
    assert err.startswith("terminated") and "\n" not in err, err
    # no output and no temporary; only the checkpoint the same command resumes from (complete, not torn)
    assert [p.suffix for p in runs.iterdir()] == [".checkpoint"]


def test_temporaries_of_killed_writers_are_removed_on_the_next_write(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    from secateurs.files import _host

    host = _host()
    stale = tmp_path / f".pruned.{host}.{dead}.x1y2.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    kept = [tmp_path / f".pruned.{host}.{os.getpid()}.x3y4.tmp",  # a writer that still runs
            tmp_path / f".pruned.otherhost.{dead}.x5y6.tmp",  # another machine's, on a shared filesystem
            tmp_path / f".pruned.2.{host}.{dead}.x7y8.tmp"]  # a sibling output's (pruned.2)
    for path in kept:
        path.mkdir()
    with atomic_directory(tmp_path / "pruned") as tmp:
        (tmp / "report.json").write_text("{}")
    assert not stale.exists() and all(p.exists() for p in kept) and (tmp_path / "pruned" / "report.json").is_file()


# --- 3. write failures ----------------------------------------------------------------------------
def test_an_output_that_cannot_be_written_fails_before_loading(capsys, tiny_model_dir, data_dir, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    base = ["prune", str(tiny_model_dir), "--blocks", "1", *SMALL, "--data-dir", str(data_dir)]
    _no_loading(monkeypatch)
    assert "is a file, not a directory" in _err(capsys, *base, "--out", str(tmp_path / "a-file" / "out"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a read-only place (root ignores modes)
    assert "is not writable" in _err(capsys, *base, "--out", str(tmp_path / "missing" / "out"))


def test_a_disk_too_small_for_the_model_fails_before_calibration(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import shutil

    import secateurs.files as files

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage._replace(free=10_000))
    _no_calibration(monkeypatch)
    with pytest.raises(SecateursError, match="not enough space for .* MiB free"):
        prune(str(tiny_model_dir), "blockpruner", {"blocks": 1}, data=DataSpec(data_dir=data_dir),
              output={"path": tmp_path / "out"}, progress=False)


def test_a_disk_that_fills_during_the_save_is_one_line_and_nothing_is_left(capsys, tiny_model_dir, data_dir, tmp_path,
                                                                           monkeypatch):
    import errno

    import secateurs.run.structured as structured

    def full(adapter, tokenizer, removed, directory, info):
        (directory / "model.safetensors").write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(structured, "save_pruned", full)
    runs = tmp_path / "runs"
    err = _err(capsys, "prune", str(tiny_model_dir), "--blocks", "1", *SMALL, "--data-dir", str(data_dir),
               "--out", str(runs / "out"))
    assert "could not write" in err and "no space left on the device" in err
    # no output and no temporary; only the checkpoint the same command resumes from (complete, not torn)
    assert [p.suffix for p in runs.iterdir()] == [".checkpoint"]


# --- 4. validation before the work ------------------------------------------------------------------
def test_data_sets_are_checked_before_the_model_loads(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    _no_loading(monkeypatch)
    cases = [
        (dict(evaluation={"ppl": ["wikitext3"]}), "unknown dataset 'wikitext3'"),
        (dict(data={"calib": "alpaca:test", "data_dir": data_dir}), "has no split 'test'"),
        (dict(data={"data_dir": tmp_path}), "data file not found"),
        (dict(data={"calib": str(tmp_path / "missing.jsonl"), "data_dir": data_dir}), "data file not found"),
        (dict(data={"seqlen": 1}), "--seqlen must be at least 2"),
        (dict(data={"samples": 0}), "--samples must be at least 1"),
    ]
    for kwargs, message in cases:
        kwargs.setdefault("data", {"data_dir": data_dir})
        with pytest.raises(SecateursError, match=message):
            prune(str(tiny_model_dir), "blockpruner", {"blocks": 1}, progress=False, **kwargs)


def test_windows_longer_than_the_model_positions_fail_before_calibration(tiny_model_dir, data_dir, monkeypatch):
    _no_calibration(monkeypatch)
    with pytest.raises(SecateursError, match="longer than the 256 positions"):
        prune(str(tiny_model_dir), "blockpruner", {"blocks": 1}, data=DataSpec(seqlen=300, data_dir=data_dir),
              progress=False)


# --- 5. options that do nothing, degenerate results ----------------------------------------------------
def test_removing_every_decoder_layer_is_refused(capsys, tiny_model_dir, data_dir, tmp_path):
    base = ["prune", str(tiny_model_dir), *SMALL, "--data-dir", str(data_dir), "--out", str(tmp_path / "out")]
    assert "would remove every decoder layer" in _err(capsys, *base, "--method", "shortgpt", "--blocks", "3")
    assert "would remove every decoder layer" in _err(capsys, *base, "--blocks", "6")
    assert not (tmp_path / "out").exists()


# --- 6. silent nonsense -------------------------------------------------------------------------------
def test_a_weight_holding_nan_is_an_error_naming_the_tensor(capsys, tiny_model_dir, data_dir):
    file = tiny_model_dir / "model.safetensors"
    tensors = load_file(str(file))
    name = next(k for k in tensors if "mlp.down_proj" in k)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(file), metadata={"format": "pt"})
    err = _err(capsys, "eval", str(tiny_model_dir), "--data-dir", str(data_dir), "--max-windows", "1")
    assert "holds NaN or inf" in err and name.removeprefix("model.") in err


def test_a_nan_loss_is_an_error_naming_the_window(byte_tokenizer, data_dir):
    from conftest import tiny_model
    from secateurs.data import token_windows
    from secateurs.evaluation.perplexity import perplexity

    model = tiny_model("llama")
    windows = token_windows("wikitext2", byte_tokenizer, 32, data_dir=data_dir, max_windows=2)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("inf")
    with pytest.raises(SecateursError, match="wikitext2: the loss of window 0"):
        perplexity(model, windows, progress=False)


# --- 7. concurrent writers -----------------------------------------------------------------------------
RACE = r"""
import sys
from secateurs.files import atomic_directory
for i in range(int(sys.argv[2])):
    with atomic_directory(sys.argv[1], overwrite=True) as tmp:
        (tmp / "who").write_text(f"{sys.argv[3]} {i}")
"""


def test_concurrent_overwrites_of_one_output_are_safe(tmp_path):
    out = tmp_path / "out"
    writers = [subprocess.Popen([sys.executable, "-c", RACE, str(out), "60", str(k)], stderr=subprocess.PIPE, text=True)
               for k in range(4)]
    for writer in writers:
        assert writer.wait(timeout=300) == 0, writer.stderr.read()
    assert (out / "who").read_text().split()[0] in {"0", "1", "2", "3"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old copy left behind


# --- 8. smaller ones -----------------------------------------------------------------------------------
def test_unsupported_devices_and_an_unreachable_hub_fail_at_once(capsys, tiny_model_dir):
    assert "device 'mps' is not supported" in _err(capsys, "eval", str(tiny_model_dir), "--device", "mps")
    start = time.perf_counter()
    with pytest.raises(SecateursError, match="not in the local Hugging Face cache and the hub cannot be reached"):
        load_model("nobody-here/no-such-model")
    assert time.perf_counter() - start < 10


def test_data_without_a_data_directory_says_how_to_set_one(capsys, monkeypatch):
    from secateurs.cli import main

    monkeypatch.delenv("SECATEURS_DATA", raising=False)
    assert main(["data"]) == 0
    assert "no data directory: pass --data-dir DIR or set $SECATEURS_DATA" in capsys.readouterr().out
