"""`secateurs plan`: memory and work from a config alone, checked against published sizes and measured peaks."""

import json
from pathlib import Path

import pytest

from conftest import cli_error
from secateurs import SecateursError
from secateurs.cli import main
from secateurs.plan import GIB, load_config, make_plan, parse_bytes
from secateurs.registry import run_shape

CONFIGS = Path(__file__).parent / "fixtures" / "configs"
RESULTS = Path(__file__).parent.parent / "benchmarks" / "results"
PUBLISHED_PARAMETERS = {  # the model cards' exact counts
    "llama-2-7b": 6_738_415_616, "llama-3-8b": 8_030_261_248, "llama-2-70b": 68_976_648_192,
    "qwen2.5-7b": 7_615_616_512, "smollm2-135m": 134_515_008,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_parameter_counts_from_the_config_alone(name):
    plan = make_plan(load_config(str(CONFIGS / f"{name}.json")), run_shape("wanda", dtype_bytes=2))
    assert plan.parameters == PUBLISHED_PARAMETERS[name]
    assert plan.parts["weights"] == 2 * PUBLISHED_PARAMETERS[name]


def test_sparsegpt_holds_one_layer_of_hessians_and_the_layer_cache():
    config = load_config(str(CONFIGS / "llama-2-7b.json"))
    plan = make_plan(config, run_shape("sparsegpt", windows=128, seqlen=2048, dtype_bytes=2))
    hidden, intermediate = 4096, 11008  # q, k, v, o, gate, up read H columns; down reads I
    assert plan.parts["statistics (Hessians)"] == (6 * hidden**2 + intermediate**2) * 4
    assert plan.parts["layer input and output cache"] == 2 * 128 * 2048 * hidden * 2
    assert plan.flops > make_plan(config, run_shape("wanda", windows=128, seqlen=2048, dtype_bytes=2)).flops  # + OBS


def test_llama_2_70b_dpruner_does_not_fit_one_80gb_gpu_but_wanda_does():
    config = load_config(str(CONFIGS / "llama-2-70b.json"))
    dpruner = make_plan(config, run_shape("dpruner", dtype_bytes=2, seqlen=128))
    wanda = make_plan(config, run_shape("wanda", dtype_bytes=2, windows=128, seqlen=2048))
    assert dpruner.peak_bytes > 80e9 * 4  # S float32 + G bfloat16 + bf16 weights: 6 bytes x 69 B parameters
    assert wanda.peak_bytes < dpruner.peak_bytes


@pytest.mark.parametrize("config_name,dtype", [("domain step, G bfloat16 (default)", 2),
                                               ("domain step, G float32", 4)])
def test_plan_agrees_with_the_measured_dpruner_peak_on_smollm2(config_name, dtype):
    measured = next(r for r in json.loads((RESULTS / "dpruner_memory.json").read_text())["after"]
                    if r["name"] == config_name)
    shape = run_shape("dpruner", seqlen=measured["seqlen"], dtype_bytes=4, domain_windows=measured["windows"],
                     update_batch_size=measured["options"]["update_batch_size"], general_bytes=dtype)
    predicted = make_plan(load_config(str(CONFIGS / "smollm2-135m.json")), shape).peak_bytes
    assert abs(predicted - measured["peak_bytes"]) / measured["peak_bytes"] < 0.25, (predicted / GIB, measured["peak_bytes"] / GIB)


def test_plan_command_prints_and_says_whether_it_fits(capsys):
    assert main(["plan", str(CONFIGS / "llama-3-8b.json"), "--method", "sparsegpt", "--gpus", "8",
                 "--gpu-memory", "80GB", "--tflops", "300"]) == 0
    out = capsys.readouterr().out
    assert "8.030 B parameters" in out and "fits" in out and "bfloat16" not in out.splitlines()[0]
    assert main(["plan", str(CONFIGS / "llama-3-8b.json"), "--method", "blockpruner", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dtype"] == "bfloat16" and plan["parts"]["weights"] == 2 * 8_030_261_248


@pytest.mark.parametrize("argv,message", [
    (["--method", "wanda", "--gpu-memory", "80XB"], "cannot read the memory size '80XB'"),
    (["--method", "nosuch"], "unknown method 'nosuch'"),
    (["--method", "wanda", "--windows", "0"], "--windows must be at least 1"),
])
def test_plan_bad_input_is_one_line(capsys, argv, message):
    assert message in cli_error(capsys, "plan", str(CONFIGS / "llama-2-7b.json"), *argv)


def test_plan_of_a_missing_or_broken_config(tmp_path, capsys):
    broken = tmp_path / "config.json"
    broken.write_text("{not json")
    assert "is not valid JSON" in cli_error(capsys, "plan", str(broken), "--method", "wanda")
    with pytest.raises(SecateursError, match="cannot read the config"):
        load_config(str(tmp_path / "nothing-here"))


def test_parse_bytes():
    assert parse_bytes("80GB") == 80 * 10**9 and parse_bytes("24GiB") == 24 * 2**30 and parse_bytes("512") == 512
    with pytest.raises(SecateursError):
        parse_bytes("-3GB")


def _measured_on_the_1_5b():
    """Every run of benchmarks/large_model.py on qwen2.5-coder-1.5b with its peak RSS (the committed results)."""
    runs = []
    for file in sorted(RESULTS.glob("large_model*.json")):
        runs += [r for r in json.loads(file.read_text())["results"] if "peak_rss_gib" in r]
    return runs


@pytest.mark.parametrize("run", _measured_on_the_1_5b(), ids=lambda r: r["name"])
def test_plan_agrees_with_the_measured_peaks_on_the_1_5b_model(run):
    from secateurs.plan import CPU_RUNTIME_BYTES

    config = load_config(str(CONFIGS / "qwen2.5-coder-1.5b.json"))
    options = run["options"]
    shape = run_shape(run["method"], windows=run["samples"], seqlen=run["seqlen"], blocks=options.get("blocks", 8),
                      domain_windows=run.get("domain_samples", 64), update_batch_size=options.get("update_batch_size", 8),
                      epochs=options.get("steps", 1))
    plan = make_plan(config, shape)
    streamed = run["options"].get("offload") == "disk" and plan.offloaded is not None
    predicted = (plan.offloaded_peak_bytes if streamed else plan.peak_bytes) + CPU_RUNTIME_BYTES
    if run.get("eval_windows"):  # the evaluation's logits: one batch, float32, and their log-softmax
        predicted += 2 * min(run["eval_windows"], 4) * run["seqlen"] * config.vocab_size * 4
    measured = run["peak_rss_gib"] * GIB
    assert abs(predicted - measured) / measured < 0.25, (predicted / GIB, measured / GIB)


def test_the_cost_model_of_the_search_on_several_processes(capsys):
    from secateurs.plan import search_speedup

    assert search_speedup(32, 8, 1) == 1.0
    assert 6.0 < search_speedup(32, 8, 8) < 8  # Llama-2-7B, 8 steps, 8 GPUs: every rank also captures
    assert search_speedup(32, 8, 2) < search_speedup(32, 8, 4) < search_speedup(32, 8, 8)
    # 64 windows in batches of 4: 16 batches, 2 per GPU, so the windows divide (the prefix cache too)
    assert main(["plan", str(CONFIGS / "llama-2-7b.json"), "--method", "blockpruner", "--gpus", "8", "--tflops", "300"]) == 0
    out = capsys.readouterr().out
    assert "on 8 GPUs (torchrun)" in out and "8.0x by the cost model (the batches of windows are dealt" in out
    # 16 windows of 2048 tokens in batches of 4 (the paper's calibration): 4 batches, so the candidates divide
    assert main(["plan", str(CONFIGS / "llama-2-7b.json"), "--method", "blockpruner", "--gpus", "8", "--tflops", "300",
                 "--windows", "16", "--seqlen", "2048"]) == 0
    out = capsys.readouterr().out
    assert "6.2x by the cost model (the candidates of each step are dealt" in out


def test_the_search_divides_windows_when_every_process_gets_a_batch():
    from secateurs.plan import choose_division, search_speedup
    assert search_speedup(32, 8, 8, "windows", batches=16) == 8.0  # every pass divides evenly
    assert search_speedup(32, 8, 8, "windows", batches=9) == 9 / 2  # the slowest process has 2 of 9 batches
    assert choose_division(32, 8, 8, batches=16) == "windows"
    assert choose_division(32, 8, 8, batches=9) == "candidates"  # 4.5x < the candidates' ~6.2x
    assert choose_division(32, 8, 8, batches=4) == "candidates"  # fewer batches than processes
    assert choose_division(32, 8, 1, batches=16) == "candidates"


@pytest.mark.parametrize("method", ["layer-search", "one-shot-ppl", "relative-magnitude", "finercut", "magnitude"])
def test_plan_takes_every_registered_method(method, capsys):
    """The plan asks the method for the shape of its work (it refused `--method layer-search` before)."""
    assert main(["plan", str(CONFIGS / "smollm2-135m.json"), "--method", method]) == 0
    assert f"plan for {method} on" in capsys.readouterr().out
