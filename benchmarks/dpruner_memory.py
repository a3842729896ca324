"""Benchmark: peak memory of D-Pruner's domain step (the updates and the importance S) on a real model.

Each configuration runs in its own process. Its peak is the weights and G (held before the step) plus
what the process's resident set (``VmHWM``, reset by ``/proc/self/clear_refs`` just before the step)
grew by at most during it: S, gradients, the original weights read back from disk, activations. G is
random (its values do not change the memory). The activations alone are measured too: one forward +
backward of one batch through the same loss, every gradient dropped as it arrives.

    python benchmarks/dpruner_memory.py --data-dir ../shared/data --out benchmarks/results/dpruner_memory.json

``--before`` runs what the earlier code understood (for a checkout of an older commit, with
``PYTHONPATH=OLD/src``): the domain step with its defaults, and the activations of transformers' loss.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, re, sys, time
import torch

def status(field):
    return int(re.search(field + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

from secateurs import DPrunerOptions, ModelAdapter, load_model
from secateurs.data import token_windows
from secateurs.unstructured.dpruner import domain_importance
settings = json.loads(sys.argv[1])
lm = load_model(settings["model"], dtype="float32", device="cpu")
adapter = ModelAdapter(lm.model)
windows = token_windows("healthcare:train", lm.tokenizer, settings["seqlen"], settings["data_dir"],
                        samples=settings["samples"])
weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
held = getattr(torch, settings.get("general_dtype", "float32"))
general = {n: torch.rand(m.weight.shape, dtype=held) for n, m in adapter.prunable_linears().items()}
general_bytes = sum(g.numel() * g.element_size() for g in general.values())
options = settings["options"]
ids = windows.input_ids[: options["update_batch_size"]]
start = time.perf_counter()
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # the peak from here on
if settings["mode"].startswith("activations"):  # one forward + backward, each gradient dropped on arrival
    for p in lm.model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    if settings["mode"] == "activations (labels= loss)":
        lm.model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    else:
        from secateurs.unstructured.dpruner import next_token_loss
        next_token_loss(adapter, ids).backward()
else:
    scores, _ = domain_importance(adapter, windows, general, DPrunerOptions(sparsity=0.5, **options), progress=False)
extra = status("VmHWM") - before
if settings.get("mask_file"):  # the 50% per-block masks (D-Pruner's default groups), for the agreement
    import numpy as np
    from secateurs.unstructured.masks import Pattern, select_mask
    pattern = Pattern(0.5, "blocks:32")
    np.save(settings["mask_file"], np.packbits(torch.cat([select_mask(scores[n], pattern).flatten() for n in sorted(scores)]).numpy()))
print("RESULT " + json.dumps({"extra_bytes": extra, "weight_bytes": weights, "general_bytes": general_bytes,
                              "windows": len(windows.input_ids), "seconds": time.perf_counter() - start}))
"""


def run(settings: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{settings['name']} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    # the domain step's peak: the weights and G, held before it, plus what it added at its peak
    result["peak_bytes"] = result["weight_bytes"] + result["general_bytes"] + result["extra_bytes"]
    result["peak_over_weights"] = result["peak_bytes"] / result["weight_bytes"]
    print(f"{settings['name']}: peak {result['peak_bytes'] / 2**30:.2f} GiB = {result['peak_over_weights']:.2f}x "
          f"the weights ({result['seconds']:.0f} s)", flush=True)
    return {**settings, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir")
    parser.add_argument("--samples", type=int, default=16, help="healthcare documents")
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--before", action="store_true", help="only the configuration older code understands")
    parser.add_argument("--out", default="benchmarks/results/dpruner_memory.json")
    args = parser.parse_args()
    common = {"model": args.model, "data_dir": args.data_dir, "samples": args.samples, "seqlen": args.seqlen}
    train = {"steps": 1, "lam": 0.1, "update_batch_size": args.batch_size}
    configs = [{"name": "domain step (code as checked out)", "mode": "dpruner", "options": train},
               {"name": "activations (labels= loss)", "mode": "activations (labels= loss)", "options": train}]
    if not args.before:
        configs = [
            {"name": "activations (chunked loss)", "mode": "activations (chunked loss)", "options": train},
            {"name": "domain step, G float32", "mode": "dpruner", "options": {**train, "general_dtype": "float32"}},
            {"name": "domain step, G bfloat16 (default)", "mode": "dpruner", "general_dtype": "bfloat16", "options": train},
        ]
    with tempfile.TemporaryDirectory() as tmp:
        results = [run({**common, **config, "mask_file": f"{tmp}/{i}.npy" if config["mode"] == "dpruner" else None})
                   for i, config in enumerate(configs)]
        masks = {r["name"]: np.unpackbits(np.load(r["mask_file"])) for r in results if r["mask_file"]}
    if len(masks) == 2:  # G in float32 vs bfloat16: how many mask entries agree
        a, b = masks.values()
        agreement = float((a == b).mean())
        print(f"masks with G float32 vs bfloat16: {agreement:.6f} of the entries agree", flush=True)
        results.append({"name": "mask agreement, G float32 vs bfloat16", "agreement": agreement})
    for r in results:
        r.pop("mask_file", None)
    out = Path(args.out)  # "before" and "after" runs share one file, each under its own key
    recorded = json.loads(out.read_text()) if out.is_file() else {}
    recorded["before" if args.before else "after"] = results
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(recorded, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
