"""Benchmark: peak memory of the first load of a GGUF model (an empty cache), against a later load.

Each load is its own process (its peak resident set, ``VmHWM``, is its own: unlike ``ru_maxrss`` it does not
carry the parent's over ``exec``) and loads the model as
``--offload disk`` does (``load_model_streamed``: the weights stay in the cache's files), so its peak is
what writing the cache costs. Three loads per model: the first one from an empty cache with the whole
model dequantised by transformers (before: the loader is made to take that path, the earlier code's
only one), the first one written tensor by tensor (models/gguf_cache.py), and a later one from that cache.

    python benchmarks/gguf_first_load.py --models smollm2-135m --out benchmarks/results/gguf_first_load.json

A built-in alias is located (assembled from its installed parts, or fetched) in the usual cache first;
only the dequantised directory goes to a temporary cache. ``--synthetic`` adds a random Qwen2 GGUF with
Qwen2.5-0.5B's shapes (Q8_0 matrices, 1.9 GiB in float32), written first to a temporary file: the
memory of a larger model where none is installed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, re, sys, time
settings = json.loads(sys.argv[1])
os.environ["SECATEURS_CACHE"] = settings["cache"]
from secateurs.models import loading
if settings["whole_model"]:
    loading.plan_dequantisation = lambda path: None  # the whole model through transformers
start = time.perf_counter()
lm = loading.load_model_streamed(settings["gguf"])
cache = lm.source["cache"]
peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1))
print("RESULT " + json.dumps({
    "seconds": time.perf_counter() - start, "peak_rss_gib": peak_kib / 2**20,
    "float32_weights_gib": sum(f.stat().st_size for f in os.scandir(cache) if f.name.endswith(".safetensors")) / 2**30,
}))
"""


def run(name: str, gguf: Path, cache: Path, whole_model: bool = False) -> dict:
    settings = {"gguf": str(gguf), "cache": str(cache), "whole_model": whole_model}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    print(f"{name}: peak RSS {result['peak_rss_gib']:.2f} GiB ({result['seconds']:.0f} s)", flush=True)
    return {"name": name, **result}


def gguf_file(spec: str) -> Path:
    from secateurs.models.builtin import BUILTIN_MODELS, builtin_gguf

    return builtin_gguf(spec)[1] if spec in BUILTIN_MODELS else Path(spec)


QWEN2_05B = dict(hidden=896, layers=24, intermediate=4864, vocab=151936, heads=14, kv_heads=2)


def synthetic_gguf(path: Path, hidden: int, layers: int, intermediate: int, vocab: int, heads: int,
                   kv_heads: int) -> Path:
    """A random Qwen2 GGUF of these shapes (tied embeddings, Q8_0 matrices) with a six-token tokenizer."""
    import contextlib

    import gguf
    import numpy as np
    from secateurs.export.gguf_tokenizer import GGUFTokenizer

    rng, kv = np.random.default_rng(0), kv_heads * hidden // heads
    with contextlib.closing(gguf.GGUFWriter(str(path), "qwen2")) as writer:
        writer.add_name("synthetic qwen2")
        for add, value in [(writer.add_context_length, 32768), (writer.add_embedding_length, hidden),
                           (writer.add_block_count, layers), (writer.add_feed_forward_length, intermediate),
                           (writer.add_head_count, heads), (writer.add_head_count_kv, kv_heads),
                           (writer.add_layer_norm_rms_eps, 1e-6), (writer.add_rope_freq_base, 1e6),
                           (writer.add_vocab_size, vocab)]:
            add(value)
        GGUFTokenizer("gpt2", ["<unk>", "<s>", "</s>", "a", "b", "ab"], [3, 3, 3, 1, 1, 1], ["a b"],
                      {"bos": 1, "eos": 2, "unk": 0}, True, None).write(writer)
        shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
        for b in range(layers):
            shapes.update({f"blk.{b}.{name}": shape for name, shape in [
                ("attn_norm.weight", (hidden,)), ("ffn_norm.weight", (hidden,)), ("attn_q.weight", (hidden, hidden)),
                ("attn_q.bias", (hidden,)), ("attn_k.weight", (kv, hidden)), ("attn_k.bias", (kv,)),
                ("attn_v.weight", (kv, hidden)), ("attn_v.bias", (kv,)), ("attn_output.weight", (hidden, hidden)),
                ("ffn_gate.weight", (intermediate, hidden)), ("ffn_up.weight", (intermediate, hidden)),
                ("ffn_down.weight", (hidden, intermediate))]})
        for name, shape in shapes.items():
            kind = gguf.GGMLQuantizationType.F32 if len(shape) == 1 else gguf.GGMLQuantizationType.Q8_0
            values = rng.standard_normal(shape, dtype=np.float32) * 0.02
            writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    return path


def measure(spec: str, gguf: Path) -> dict:
    """The three loads of ``gguf`` (called ``spec`` in the results)."""
    with tempfile.TemporaryDirectory() as before, tempfile.TemporaryDirectory() as after:
        runs = [run(f"{spec}: first load, whole model dequantised by transformers (before)", gguf, Path(before), True),
                run(f"{spec}: first load, dequantised tensor by tensor", gguf, Path(after)),
                run(f"{spec}: later load, from the cache", gguf, Path(after))]
    return {"model": spec, "gguf_bytes": gguf.stat().st_size, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m", help="built-in aliases or .gguf files, comma-separated")
    parser.add_argument("--synthetic", action="store_true", help="also a random Qwen2 with Qwen2.5-0.5B's shapes")
    parser.add_argument("--out", default="benchmarks/results/gguf_first_load.json")
    args = parser.parse_args()
    results = [measure(spec, gguf_file(spec)) for spec in args.models.split(",")]
    if args.synthetic:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(measure("synthetic qwen2 (Qwen2.5-0.5B's shapes)",
                                   synthetic_gguf(Path(tmp) / "synthetic.gguf", **QWEN2_05B)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
