"""A run killed at any point leaves nothing that the next run does not clean (issue 23)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from secateurs.files import _host, remove_stale_work, work_directory
from secateurs.offload import DiskTensors


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_work_directories_of_dead_processes_are_removed_by_the_next_one(tmp_path):
    stale = tmp_path / f"secateurs-weights-{_host()}.{_dead_pid()}.abc123"
    running = tmp_path / f"secateurs-activations-{_host()}.{os.getpid()}.def456"
    other_host = tmp_path / f"secateurs-weights-elsewhere.{_dead_pid()}.ghi789"
    for d in (stale, running, other_host):
        d.mkdir()
    with DiskTensors(tmp_path) as store:
        assert store.root.name.startswith(f"secateurs-offload-{_host()}.{os.getpid()}.")
        assert not stale.exists() and running.exists() and other_host.exists()
    assert not store.root.exists()
    assert remove_stale_work(tmp_path) == []  # this process still runs
    fresh = work_directory("weights", tmp_path)
    assert fresh.parent == tmp_path and fresh.is_dir()


def test_a_killed_streamed_prune_leaves_nothing_the_next_run_keeps(tiny_model_dir, data_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    command = [sys.executable, "-m", "secateurs", "--quiet", "prune", str(tiny_model_dir), "--method", "sparsegpt",
               "--sparsity", "0.5", "--calib", "c4", "--samples", "4", "--seqlen", "64", "--offload", "disk",
               "--offload-dir", str(work), "--data-dir", str(data_dir), "--eval-max-windows", "2"]
    child = subprocess.Popen([*command, "--out", str(tmp_path / "killed")])
    deadline = time.monotonic() + 120
    while not any(work.iterdir()) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = sorted(p.name for p in work.iterdir())
    assert left, "the run ended before it wrote any work directory: kill it earlier"
    done = subprocess.run([*command, "--out", str(tmp_path / "again")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert list(work.iterdir()) == []  # the killed run's work is gone, and this run removed its own
    assert not (tmp_path / "killed").exists()


def test_a_killed_suite_evaluation_resumes_without_redoing_what_was_done(tiny_model_dir, data_dir, tmp_path, capsys,
                                                                         monkeypatch):
    """The evaluation stops (as if killed) inside its second task; run again, it does only what was left."""
    import json

    from secateurs.cli import main
    from secateurs.evaluation import evaluate as evaluation

    out = tmp_path / "results.json"
    argv = ["--quiet", "eval", str(tiny_model_dir), "--ppl", "wikitext2", "--tasks", "piqa,arc_easy", "--limit", "2",
            "--seqlen", "32", "--max-windows", "2", "--data-dir", str(data_dir), "--out", str(out)]
    scored, real, dies = [], evaluation.run_task, [True]

    def counting(model, tokenizer, data, *args, **kwargs):
        scored.append(data.task.name)
        if data.task.name == "arc_easy" and dies and dies.pop():
            raise KeyboardInterrupt  # the first run dies here
        return real(model, tokenizer, data, *args, **kwargs)

    monkeypatch.setattr(evaluation, "run_task", counting)
    assert main(argv) == 130 and not out.exists()
    assert json.loads((tmp_path / "results.json.checkpoint" / "evaluation" / "state.json").read_text())["tasks"]
    assert main(argv) == 0
    assert scored == ["piqa", "arc_easy", "arc_easy"]  # piqa was not scored again
    resumed = json.loads(out.read_text())
    assert not (tmp_path / "results.json.checkpoint").exists()
    scored.clear()
    assert main([*argv[:-1], str(tmp_path / "whole.json")]) == 0 and scored == ["piqa", "arc_easy"]
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert resumed["tasks"] == whole["tasks"] and resumed["perplexity"] == whole["perplexity"]
    (tmp_path / "results.json.checkpoint" / "evaluation").mkdir(parents=True)
    (tmp_path / "results.json.checkpoint" / "protocol.json").write_text(json.dumps({"model": "another"}))
    out.unlink()
    capsys.readouterr()
    assert main(argv) == 2 and "holds a checkpoint of another run (device was None, now 'auto')" in capsys.readouterr().err
    assert main([*argv, "--fresh"]) == 0 and out.is_file() and not (tmp_path / "results.json.checkpoint").exists()


def _weights(directory):
    """Every tensor of a saved model (one safetensors file or shards)."""
    from safetensors.torch import load_file

    return {k: v for file in sorted(directory.glob("*.safetensors")) for k, v in load_file(file).items()}


@pytest.mark.parametrize("offload", ["none", "disk"])
def test_a_killed_sequential_prune_continues_after_its_last_layer(offload, byte_tokenizer, data_dir, tmp_path):
    """SparseGPT killed (SIGKILL) between layers; run again, it prunes only the layers left, bit-identically."""
    import json

    from transformers import AutoModelForCausalLM

    from conftest import tiny_config
    from secateurs.cli import main

    config = tiny_config("llama")
    config.num_hidden_layers = 6  # enough layers for the kill to land mid-way
    model = tmp_path / "six-layers"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(model)
    byte_tokenizer.save_pretrained(model)
    work = tmp_path / "work"
    work.mkdir()
    command = ["--quiet", "prune", str(model), "--method", "sparsegpt", "--sparsity", "0.5", "--calib", "c4",
               "--samples", "1", "--seqlen", "64", "--offload", offload, "--offload-dir", str(work),
               "--data-dir", str(data_dir), "--eval-max-windows", "1"]
    out, state = tmp_path / "resumed", tmp_path / "resumed.checkpoint" / "sequential" / "state.json"
    child = subprocess.Popen([sys.executable, "-m", "secateurs", *command, "--out", str(out)])
    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline:
        if state.is_file() and json.loads(state.read_text())["layers_done"] >= 1:
            break
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed_after = json.loads(state.read_text())["layers_done"]
    assert 1 <= killed_after < 6, "the kill did not land between layers"
    assert main([*command, "--out", str(out)]) == 0
    assert main([*command, "--out", str(tmp_path / "whole")]) == 0
    resumed, whole = _weights(out), _weights(tmp_path / "whole")
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    details = json.loads((out / "report.json").read_text())["details"]
    assert details["resumed"] == {"stage": "sequential", "after": killed_after}
    assert details["this_run"] == {"layers": 6 - killed_after}
    assert json.loads((tmp_path / "whole" / "report.json").read_text())["details"]["this_run"] == {"layers": 6}
    assert not (tmp_path / "resumed.checkpoint").exists() and list(work.iterdir()) == []


def test_dpruner_resumes_after_an_epoch_with_its_general_importance_kept(tiny_model_dir, data_dir, tmp_path,
                                                                         monkeypatch):
    """D-Pruner stopped once its first epoch is kept; run again, it reuses G and does the second epoch only."""
    import json

    from secateurs.cli import main
    from secateurs.unstructured import dpruner

    argv = ["--quiet", "prune", str(tiny_model_dir), "--method", "dpruner", "--sparsity", "0.5", "--domain",
            "healthcare", "--general-calib", "c4", "--data-dir", str(data_dir), "--seqlen", "32", "--samples", "1",
            "--domain-samples", "1", "--dpruner-batch-size", "4", "--dpruner-steps", "2", "--eval-max-windows", "1"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    out, checkpoint = tmp_path / "resumed", tmp_path / "resumed.checkpoint"
    save = dpruner.DomainImportance.save

    def stopping(self, *args):
        save(self, *args)
        raise KeyboardInterrupt  # stopped once the first epoch is kept

    monkeypatch.setattr(dpruner.DomainImportance, "save", stopping)
    assert main([*argv, "--out", str(out)]) == 130
    assert json.loads((checkpoint / "general_importance" / "state.json").read_text())
    assert json.loads((checkpoint / "domain_epochs" / "state.json").read_text())["epochs_done"] == 1
    monkeypatch.setattr(dpruner.DomainImportance, "save", save)
    monkeypatch.setattr(dpruner, "general_importance", lambda *a, **k: pytest.fail("G was computed again"))
    assert main([*argv, "--out", str(out)]) == 0
    assert not checkpoint.exists()
    resumed, whole = _weights(out), _weights(tmp_path / "whole")
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    details = [json.loads((d / "report.json").read_text())["details"] for d in (out, tmp_path / "whole")]
    assert details[0]["resumed"] == {"stage": "domain_epochs", "after": 1}
    assert details[0]["this_run"] == {"general_importance": False, "epochs": 1}
    assert details[1]["this_run"] == {"general_importance": True, "epochs": 2} and "resumed" not in details[1]
    assert details[0]["training"] == details[1]["training"]  # every epoch's loss, as one run has them
    assert details[0]["penalty_to_gradient_ratio"] == details[1]["penalty_to_gradient_ratio"]


# --- block searches ---------------------------------------------------------------------------------
def _search(model_dir, data_dir, out, method, options):
    from secateurs import DataSpec, EvalSpec, OutputSpec, prune

    return prune(str(model_dir), method, options, data=DataSpec(calib="alpaca", samples=8, seqlen=32, data_dir=data_dir),
                 evaluation=EvalSpec(ppl=[]), output=OutputSpec(out), progress=False).report


@pytest.mark.parametrize("method,options,saves", [
    ("blockpruner", {"blocks": 4}, 2),
    ("blockpruner", {"blocks": 4, "search": "halving", "halving_windows": 2}, 2),
    ("layer-search", {"blocks": 2}, 1),
    ("finercut", {"blocks": 3}, 1),
    ("one-shot-ppl", {"blocks": 3}, 4),
])
def test_a_stopped_search_resumes_to_the_same_blocks_with_less_work(method, options, saves, tiny_model_dir, data_dir,
                                                                    tmp_path, monkeypatch):
    """The run stops (as if killed) right after its ``saves``-th saved step; run again, it continues."""
    from secateurs.structured import search

    whole = _search(tiny_model_dir, data_dir, tmp_path / "whole", method, options)
    real, count = search.SavedProgress.save, []

    def stopping(self, state):
        real(self, state)
        count.append(1)
        if len(count) == saves:
            raise KeyboardInterrupt

    monkeypatch.setattr(search.SavedProgress, "save", stopping)
    with pytest.raises(KeyboardInterrupt):
        _search(tiny_model_dir, data_dir, tmp_path / "resumed", method, options)
    assert (tmp_path / "resumed.checkpoint" / "search" / "state.json").is_file()
    monkeypatch.setattr(search.SavedProgress, "save", real)
    resumed = _search(tiny_model_dir, data_dir, tmp_path / "resumed", method, options)
    assert resumed.removal_order == whole.removal_order
    assert [s.score for s in resumed.steps] == [s.score for s in whole.steps]
    assert "resumed" in resumed.search and "resumed" not in whole.search
    assert resumed.search_cost["block_window_evals"] < whole.search_cost["block_window_evals"]
    assert not (tmp_path / "resumed.checkpoint").exists()


def test_a_killed_block_search_resumes(tiny_model_dir, data_dir, tmp_path):
    import json

    command = [sys.executable, "-m", "secateurs", "--quiet", "prune", str(tiny_model_dir), "--method", "blockpruner",
               "--blocks", "5", "--calib", "alpaca", "--samples", "8", "--seqlen", "32", "--data-dir", str(data_dir),
               "--eval-max-windows", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([*command, "--out", str(tmp_path / "killed")], env=env)
    state = tmp_path / "killed.checkpoint" / "search" / "state.json"
    deadline = time.monotonic() + 120
    while not state.is_file() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert state.is_file() and not (tmp_path / "killed").exists(), "the run ended before its first step was saved"
    for out in ("killed", "whole"):
        done = subprocess.run([*command, "--out", str(tmp_path / out)], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
    resumed, whole = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("killed", "whole"))
    assert resumed["removal_order"] == whole["removal_order"]
    assert [s["score"] for s in resumed["steps"]] == [s["score"] for s in whole["steps"]]
    assert resumed["search_cost"]["block_window_evals"] < whole["search_cost"]["block_window_evals"]
    assert not (tmp_path / "killed.checkpoint").exists()


def test_fresh_discards_the_checkpoint_of_another_run(tiny_model_dir, data_dir, tmp_path, capsys):
    """prune --fresh, as a user types it: a checkpoint of another command is refused, then discarded."""
    import json

    from secateurs.cli import main

    (tmp_path / "out.checkpoint" / "search").mkdir(parents=True)
    (tmp_path / "out.checkpoint" / "protocol.json").write_text(json.dumps({"recipe": {"method": "layer-search"}}))
    argv = ["--quiet", "prune", str(tiny_model_dir), "--method", "blockpruner", "--blocks", "1", "--calib", "alpaca",
            "--samples", "2", "--seqlen", "16", "--eval-max-windows", "1", "--data-dir", str(data_dir),
            "--out", str(tmp_path / "out")]
    capsys.readouterr()
    assert main(argv) == 2 and "holds a checkpoint of another run" in capsys.readouterr().err
    assert main([*argv, "--fresh"]) == 0
    assert (tmp_path / "out" / "report.json").is_file() and not (tmp_path / "out.checkpoint").exists()
