#!/usr/bin/env bash
# PubMedQA (100 test rows, seeded sample) of SmolLM2 dense and pruned at 50% by Wanda, SparseGPT and
# D-Pruner (healthcare), with the calibration of benchmarks/unstructured.py. Writes benchmarks/results/pubmedqa/.
#   bash benchmarks/pubmedqa_pruned.sh ../shared/data
set -euo pipefail
DATA=${1:-../shared/data}
RUNS=${RUNS:-runs/pubmedqa}
OUT=benchmarks/results/pubmedqa
S=.venv/bin/secateurs
mkdir -p "$RUNS" "$OUT"
COMMON=(--calib c4 --samples 16 --seqlen 256 --domain healthcare --eval-seqlen 512 --eval-max-windows 8 --data-dir "$DATA" --overwrite)
EVAL=(--tasks pubmedqa --sample 100 --seed 0 --data-dir "$DATA" --overwrite)
$S --quiet eval smollm2-135m "${EVAL[@]}" --out "$OUT/dense.json"
for method in wanda sparsegpt; do
  $S --quiet prune smollm2-135m --method "$method" --sparsity 0.5 "${COMMON[@]}" --out "$RUNS/$method"
  $S --quiet eval "$RUNS/$method" "${EVAL[@]}" --out "$OUT/$method.json"
done
$S --quiet prune smollm2-135m --method dpruner --sparsity 0.5 --domain-samples 128 "${COMMON[@]}" --out "$RUNS/dpruner"
$S --quiet eval "$RUNS/dpruner" "${EVAL[@]}" --out "$OUT/dpruner.json"
