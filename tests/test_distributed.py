"""Two processes under torchrun (gloo, CPU) give the results of one: same blocks and scores, the same
perplexities, Wanda / SparseGPT masks equal up to float summation order; one process writes."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from secateurs.cli import main

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _torchrun(*argv, script=None, timeout=600):
    command = [*TORCHRUN, script] if script else [*TORCHRUN, "-m", "secateurs"]
    return subprocess.run([*command, "--quiet", *argv], capture_output=True, text=True, timeout=timeout,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def _common(data_dir, samples=8):
    return ["--data-dir", str(data_dir), "--seqlen", "32", "--samples", str(samples), "--batch-size", "2",
            "--eval-max-windows", "6", "--device", "cpu"]


def _weights(directory):
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


@pytest.mark.parametrize("method,extra", [("blockpruner", ["--blocks", "3", "--divide", "candidates"]),
                                          ("blockpruner", ["--blocks", "3", "--divide", "windows"]),
                                          ("blockpruner", ["--blocks", "2", "--search", "halving", "--halving-windows", "2"]),
                                          ("shortgpt", ["--blocks", "1", "--unit", "block"])])
def test_two_processes_choose_the_blocks_of_one(method, extra, tiny_model_dir, data_dir, tmp_path):
    args = ["prune", str(tiny_model_dir), "--method", method, *extra, *_common(data_dir)]
    assert main(["--quiet", *args, "--out", str(tmp_path / "one")]) == 0
    run = _torchrun(*args, "--out", str(tmp_path / "two"))
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two"))
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["removal_order"] == one["removal_order"]
    assert [s["score"] for s in two["steps"]] == [s["score"] for s in one["steps"]]  # bit-identical
    for name, entry in one["evaluation"].items():  # perplexities from the windows divided over the ranks
        assert (two["evaluation"][name]["dense_ppl"], two["evaluation"][name]["pruned_ppl"]) == \
            (entry["dense_ppl"], entry["pruned_ppl"])
    assert two["evaluation"]["wikitext2"]["protocol"]["processes"] == 2
    per_process = two["search_cost"].get("per_process")
    if "halving" in extra:  # the same eliminations and finalists, whichever process scored them
        assert (two["search_cost"]["eliminated"], two["search_cost"]["completed"] + two["search_cost"]["abandoned"]) == \
            (one["search_cost"]["eliminated"], one["search_cost"]["completed"] + one["search_cost"]["abandoned"]) != (0, 0)
    if "windows" in extra:  # every process scored every candidate on its half of the batches
        assert "batches of windows dealt over 2 processes" in two["search"]
        assert all(p["block_window_evals"] < one["search_cost"]["block_window_evals"] for p in per_process)
    elif "candidates" in extra:
        assert "candidates dealt over 2 processes" in two["search"]
        assert len(per_process) == 2 and all(p["completed"] > 0 for p in per_process)  # both did part of the work
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "tiny-llama", "two"]  # nothing else written
    assert run.stdout.count("(in this order)") == 1  # rank 0 alone prints


DPRUNER = ["--domain", "healthcare", "--general-calib", "c4", "--domain-samples", "2", "--dpruner-batch-size", "4"]


@pytest.mark.parametrize("method,extra,threshold", [
    ("wanda", [], 1.0), ("sparsegpt", [], 0.99), ("dpruner", [*DPRUNER, "--dpruner-steps", "1"], 0.99),
])
def test_two_processes_give_the_masks_of_one(method, extra, threshold, tiny_model_dir, data_dir, tmp_path):
    args = ["prune", str(tiny_model_dir), "--method", method, "--sparsity", "0.5", *extra, *_common(data_dir)]
    assert main(["--quiet", *args, "--out", str(tmp_path / "one")]) == 0
    run = _torchrun(*args, "--out", str(tmp_path / "two"))
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    masks = [(one[k] == 0, two[k] == 0) for k in one if k.endswith("proj.weight")]
    agreement = sum(int((a == b).sum()) for a, b in masks) / sum(a.numel() for a, _ in masks)
    # Wanda's input norms are float64 sums: the order of the two ranks' partial sums changes nothing here.
    # SparseGPT's Hessians are float32 sums and its OBS updates follow them: ties may fall differently.
    # D-Pruner: each update's windows are divided and the gradients summed over the processes.
    print(f"AGREEMENT {method} {extra[-1:]}: {agreement:.6f}")
    assert agreement >= threshold, agreement
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["processes"] == 2


def test_eval_divides_the_windows_and_rows_and_gives_the_same_numbers(tiny_model_dir, data_dir, tmp_path):
    args = ["eval", str(tiny_model_dir), "--ppl", "wikitext2", "--seqlen", "32", "--max-windows", "7",
            "--tasks", "arc_easy,meqsum", "--limit", "5", "--batch-size", "2", "--data-dir", str(data_dir),
            "--device", "cpu"]
    assert main(["--quiet", *args, "--out", str(tmp_path / "one.json"), "--log-samples", str(tmp_path / "one.jsonl")]) == 0
    run = _torchrun(*args, "--out", str(tmp_path / "two.json"), "--log-samples", str(tmp_path / "two.jsonl"))
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    ppl_one, ppl_two = one["perplexity"]["wikitext2"], two["perplexity"]["wikitext2"]
    assert ppl_two["window_nll"] == ppl_one["window_nll"] and ppl_two["ppl"] == ppl_one["ppl"]
    assert ppl_two["protocol"]["processes"] == 2 and two["processes"] == 2
    for task in ("arc_easy", "meqsum"):  # rows divided: the same metrics, every row scored once
        assert two["tasks"][task]["metrics"] == one["tasks"][task]["metrics"]
        assert two["tasks"][task]["n"] == one["tasks"][task]["n"] == 5
    # every row's log-likelihoods and prediction, in row order, as one process wrote them
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()


def test_more_processes_than_batches_is_one_line(tiny_model_dir, data_dir, tmp_path):
    run = _torchrun("prune", str(tiny_model_dir), "--method", "wanda", "--sparsity", "0.5",
                    *_common(data_dir, samples=1), "--batch-size", "1000", "--out", str(tmp_path / "o"))
    assert run.returncode != 0
    assert "error: 2 processes but only 1 batches of calibration windows to divide" in run.stderr
    assert "Traceback" not in run.stderr.split("error:")[0][-500:] and not (tmp_path / "o").exists()


def test_ranks_given_different_arguments_are_named(tiny_model_dir, data_dir, tmp_path):
    script = tmp_path / "launch.py"  # rank 1 is given another seed, as a mistaken launcher would
    script.write_text("import os, sys\n"
                      "if os.environ['RANK'] == '1': sys.argv += ['--seed', '1']\n"
                      "from secateurs.cli import main\nsys.exit(main())\n")
    run = _torchrun("prune", str(tiny_model_dir), "--method", "wanda", "--sparsity", "0.5", *_common(data_dir),
                    "--out", str(tmp_path / "o"), script=str(script))
    assert run.returncode != 0
    assert "error: rank 1 has different arguments than rank 0" in run.stderr
    assert not (tmp_path / "o").exists()


def test_a_process_that_dies_stops_the_run_with_one_line_and_no_output(tiny_model_dir, data_dir, tmp_path):
    script = tmp_path / "launch.py"  # rank 1 dies in the middle of the search, as a crashed process would
    script.write_text("import os, sys\n"
                      "from secateurs import distributed\n"
                      "gather = distributed.Ranks.gather\n"
                      "calls = []\n"
                      "def dying(self, value):\n"
                      "    calls.append(1)\n"
                      "    if self.rank == 1 and len(calls) == 4:\n"
                      "        os._exit(3)\n"
                      "    return gather(self, value)\n"
                      "distributed.Ranks.gather = dying\n"
                      "from secateurs.cli import main\nsys.exit(main())\n")
    run = _torchrun("prune", str(tiny_model_dir), "--method", "blockpruner", "--blocks", "2", *_common(data_dir),
                    "--out", str(tmp_path / "o"), script=str(script))
    assert run.returncode != 0
    rank0 = [line for line in run.stderr.splitlines() if line.startswith(("error:", "terminated"))]
    assert rank0 and ("another process of this run stopped or failed" in rank0[0] or
                      "by torchrun: another process of the run failed" in rank0[0]), run.stderr[-2000:]
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o*"))
