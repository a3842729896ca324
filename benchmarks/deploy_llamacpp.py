"""Benchmark: prefill and decode tokens/s in llama.cpp, dense vs BlockPruner-pruned SmolLM2 (GGUF exports).

For each target parameter ratio, BlockPruner prunes SmolLM2 (a small calibration set) and the result is
exported to GGUF (llama.cpp's deci architecture); the dense model is exported the same way. Each model
then runs in llama.cpp through llama-cpp-python: a prompt of --prompt-tokens tokens (prefill), then
--decode-tokens greedy tokens one step at a time (decode), for each of --batch-sizes sequences at once
(llama.cpp's batched API). Rounds interleave the models, the first
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
import numpy as np

from secateurs import DataSpec, EvalSpec, ModelAdapter, OutputSpec, load_model, prune
from secateurs.export import export
from secateurs.export.gguf import write_gguf
from secateurs.files import write_json_atomic
from secateurs.models.builtin import builtin_gguf
from secateurs.reporting.provenance import environment


def _speed(path: Path, batch: int, prompt: list[int], decode: int, threads: int) -> tuple[float, float]:
    """Prefill and decode tokens/s of ``batch`` sequences at once (llama.cpp's batched API, greedy).

    Every sequence gets the same prompt, in one llama_decode call (logits at its last position only);
    then each step decodes one token per sequence in one call.
    """
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = batch * (len(prompt) + decode + 8)
    params.n_batch = params.n_ubatch = batch * len(prompt)
    params.n_seq_max, params.n_threads, params.n_threads_batch = batch, threads, threads
    ctx = llama_cpp.llama_init_from_model(model, params)
    vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    tokens = llama_cpp.llama_batch_init(batch * len(prompt), 0, batch)

    def fill(entries: list[tuple[int, int, int, bool]]) -> None:  # (token, position, sequence, wants logits)
        for i, (token, position, sequence, logits) in enumerate(entries):
            tokens.token[i], tokens.pos[i], tokens.n_seq_id[i], tokens.logits[i] = token, position, 1, logits
            tokens.seq_id[i][0] = sequence
        tokens.n_tokens = len(entries)

    def greedy(indices: list[int]) -> list[int]:  # the next token of each sequence, from its row in the batch
        return [int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(vocab,)).argmax())
                for i in indices]

    try:
        fill([(t, p, s, p == len(prompt) - 1) for s in range(batch) for p, t in enumerate(prompt)])
        start = time.perf_counter()
        assert llama_cpp.llama_decode(ctx, tokens) == 0
        prefill = time.perf_counter() - start
        next_tokens = greedy([s * len(prompt) + len(prompt) - 1 for s in range(batch)])
        start = time.perf_counter()
        for step in range(decode):
            fill([(next_tokens[s], len(prompt) + step, s, True) for s in range(batch)])
            assert llama_cpp.llama_decode(ctx, tokens) == 0
            next_tokens = greedy(list(range(batch)))
        decoded = time.perf_counter() - start
    finally:
        llama_cpp.llama_batch_free(tokens)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return batch * len(prompt) / prefill, batch * decode / decoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--ratios", default="0.10,0.25", help="target parameter ratios removed")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--gguf-type", default="q8_0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,8", help="sequences decoded at once")
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
        if not (work / f"bp{ratio}" / "model.gguf").is_file():  # pruned by another benchmark (deploy_vllm.py)
            report["engine_export"] = export(work / f"bp{ratio}", "gguf", work / f"bp{ratio}" / "model.gguf", gguf_type=args.gguf_type)
        models[f"blockpruner {100 * ratio:.0f}%"] = {
            "path": work / f"bp{ratio}" / "model.gguf", "ratio": report["ratio"], "removed": report["removal_order"],
            "prune_s": report["timings"]["search_s"], "layers_in_gguf": (report.get("engine_export") or report["gguf"])["layers"]}
        print(f"pruned to {100 * report['ratio']:.2f}%: {', '.join(report['removal_order'])}", flush=True)

    prompt = [(17 * i) % 49000 + 100 for i in range(args.prompt_tokens)]  # fixed token ids, no tokenizer run
    batches = [int(b) for b in args.batch_sizes.split(",")]
    times: dict[tuple[str, int], list[tuple[float, float]]] = {(n, b): [] for n in models for b in batches}
    for round_ in range(args.repeats + 1):
        for batch in batches:
            for name, model in models.items():
                measured = _speed(model["path"], batch, prompt, args.decode_tokens, args.threads)
                if round_:  # the first round warms up
                    times[name, batch].append(measured)
    rows = []
    for name, model in models.items():
        speeds = [{"batch_size": b, "prefill_tokens_per_s": statistics.median(t[0] for t in times[name, b]),
                   "decode_tokens_per_s": statistics.median(t[1] for t in times[name, b])} for b in batches]
        rows.append({"model": name, "ratio": model["ratio"], "removed": model["removed"], "speed": speeds,
                     **{k: v for k, v in model.items() if k in ("prune_s", "layers_in_gguf")}})
    dense = rows[0]
    print(f"\nllama.cpp {llama_cpp.__version__}, {args.gguf_type}, {args.threads} threads, "
          f"{args.prompt_tokens}-token prompt, {args.decode_tokens} decoded tokens, median of {args.repeats}\n")
    print("| model | removed | batch | prefill tok/s | decode tok/s | decode speed-up |\n|---|---:|---:|---:|---:|---:|")
    for row in rows:
        for entry, base in zip(row["speed"], dense["speed"]):
            print(f"| {row['model']} | {100 * row['ratio']:.2f}% | {entry['batch_size']} | {entry['prefill_tokens_per_s']:.0f} | "
                  f"{entry['decode_tokens_per_s']:.1f} | {entry['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}x |")
    write_json_atomic(args.out, {
        "engine": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}", "gguf_type": args.gguf_type,
        "threads": args.threads, "batch_sizes": batches, "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens, "repeats": args.repeats, "calibration": {
            "dataset": "alpaca", "samples": args.samples, "seqlen": args.seqlen},
        "rows": rows, "environment": environment()})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
