"""Benchmark: prefill and decode tokens/s in llama.cpp, dense vs BlockPruner-pruned SmolLM2 (GGUF exports).

For each target parameter ratio, BlockPruner prunes SmolLM2 (a small calibration set) and the result is
exported to GGUF (llama.cpp's deci architecture); the dense model is exported the same way. Each model
then runs in llama.cpp through llama-cpp-python: a prompt of --prompt-tokens tokens (prefill), then
--decode-tokens greedy tokens one at a time (decode), batch 1. Rounds interleave the models, the first
round warms up, and the median of --repeats rounds is reported. Written as JSON and a markdown table.

    .venv/bin/python benchmarks/deploy_llamacpp.py --data-dir ../shared/data --out benchmarks/results/deploy_llamacpp.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import llama_cpp

from secateurs import DataSpec, EvalSpec, ModelAdapter, OutputSpec, load_model, prune
from secateurs.export.gguf import write_gguf
from secateurs.files import write_json_atomic
from secateurs.models.builtin import builtin_gguf
from secateurs.reporting.provenance import environment


def _speed(path: Path, prompt: list[int], decode: int, threads: int) -> tuple[float, float]:
    # logits_all keeps every position's logits readable (llama-cpp-python's scores); it costs the prefill
    # the LM head at every prompt position, for the dense and the pruned models alike.
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt) + decode + 8, n_batch=len(prompt), logits_all=True,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    start = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - start
    token = int(llm.scores[llm.n_tokens - 1].argmax())
    start = time.perf_counter()
    for _ in range(decode):
        llm.eval([token])
        token = int(llm.scores[llm.n_tokens - 1].argmax())
    decoded = time.perf_counter() - start
    llm.close()
    return len(prompt) / prefill, decode / decoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--ratios", default="0.10,0.25", help="target parameter ratios removed")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--gguf-type", default="q8_0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/deploy_llamacpp.json")
    parser.add_argument("--work", help="keep the exports here; pruned directories already in it are reused")
    args = parser.parse_args()

    source = builtin_gguf("smollm2-135m")[1]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="deploy-llamacpp-"))
    models = {"dense": {"path": work / "dense.gguf", "ratio": 0.0, "removed": []}}
    if not models["dense"]["path"].is_file():
        write_gguf(ModelAdapter(load_model("smollm2-135m").model), models["dense"]["path"], source, args.gguf_type)
    for ratio in (float(r) for r in args.ratios.split(",")):
        saved = work / f"bp{ratio}" / "report.json"
        report = json.loads(saved.read_text()) if saved.is_file() else prune("smollm2-135m", "blockpruner", {"ratio": ratio},
                       data=DataSpec(calib="alpaca", samples=args.samples, seqlen=args.seqlen, data_dir=args.data_dir),
                       evaluation=EvalSpec(ppl=[]), progress=False,
                       output=OutputSpec(work / f"bp{ratio}", format="gguf", gguf_type=args.gguf_type)).report
        models[f"blockpruner {100 * ratio:.0f}%"] = {
            "path": work / f"bp{ratio}" / "model.gguf", "ratio": report["ratio"], "removed": report["removal_order"],
            "prune_s": report["timings"]["search_s"], "layers_in_gguf": report["gguf"]["layers"]}
        print(f"pruned to {100 * report['ratio']:.2f}%: {', '.join(report['removal_order'])}", flush=True)

    prompt = [(17 * i) % 49000 + 100 for i in range(args.prompt_tokens)]  # fixed token ids, no tokenizer run
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for round_ in range(args.repeats + 1):
        for name, model in models.items():
            measured = _speed(model["path"], prompt, args.decode_tokens, args.threads)
            if round_:  # the first round warms up
                times[name].append(measured)
    rows = []
    for name, model in models.items():
        prefill = statistics.median(t[0] for t in times[name])
        decode = statistics.median(t[1] for t in times[name])
        rows.append({"model": name, "ratio": model["ratio"], "removed": model["removed"],
                     "prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode,
                     **{k: v for k, v in model.items() if k in ("prune_s", "layers_in_gguf")}})
    dense = rows[0]
    print(f"\nllama.cpp {llama_cpp.__version__}, {args.gguf_type}, batch 1, {args.threads} threads, "
          f"{args.prompt_tokens}-token prompt, {args.decode_tokens} decoded tokens, median of {args.repeats}\n")
    print("| model | removed | prefill tok/s | decode tok/s | decode speed-up |\n|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['model']} | {100 * row['ratio']:.2f}% | {row['prefill_tokens_per_s']:.0f} | "
              f"{row['decode_tokens_per_s']:.1f} | {row['decode_tokens_per_s'] / dense['decode_tokens_per_s']:.2f}x |")
    write_json_atomic(args.out, {
        "engine": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}", "gguf_type": args.gguf_type,
        "threads": args.threads, "batch_size": 1, "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens, "repeats": args.repeats, "calibration": {
            "dataset": "alpaca", "samples": args.samples, "seqlen": args.seqlen},
        "rows": rows, "environment": environment()})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
