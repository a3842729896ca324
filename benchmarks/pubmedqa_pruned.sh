#!/usr/bin/env bash
# SmolLM2 pruned at 50% by Wanda, SparseGPT and D-Pruner (healthcare, plus ablations): WikiText-2 and
# healthcare PPL from each prune report, and two healthcare tasks on 100 seeded test rows each:
# PubMedQA (yes/no/maybe) and MeQSum (question summarisation, ROUGE). Calibration as in
# benchmarks/unstructured.py. Pruned models go to $RUNS and results to benchmarks/results/pubmedqa/;
# a model or result already there is reused (delete it to redo); summary.json comes last.
#   bash benchmarks/pubmedqa_pruned.sh ../shared/data [name ...]   (default: every model below)
set -euo pipefail
DATA=${1:-../shared/data}
shift || true
RUNS=${RUNS:-runs/pubmedqa}
OUT=benchmarks/results/pubmedqa
S=.venv/bin/secateurs
mkdir -p "$RUNS" "$OUT"
COMMON=(--sparsity 0.5 --calib c4 --samples 16 --seqlen 256 --domain healthcare --eval-seqlen 512
        --eval-max-windows 8 --data-dir "$DATA" --overwrite)
G="$RUNS/dpruner/general_importance.safetensors"  # step 1 once, reused by the D-Pruner variants
declare -A PRUNE=(
  [wanda]="--method wanda"
  [sparsegpt]="--method sparsegpt"
  [dpruner]="--method dpruner --domain-samples 128"
  [dpruner-512docs]="--method dpruner --domain-samples 512 --general-importance $G"
  [dpruner-row]="--method dpruner --domain-samples 128 --group row --general-importance $G"
  [dpruner-lambda0]="--method dpruner --domain-samples 128 --dpruner-lambda 0 --general-importance $G"
  [dpruner-lambda10]="--method dpruner --domain-samples 128 --dpruner-lambda 10 --general-importance $G"
)
ORDER=(dense wanda sparsegpt dpruner dpruner-512docs dpruner-row dpruner-lambda0 dpruner-lambda10)
NAMES=("${@:-${ORDER[@]}}")
for name in "${NAMES[@]}"; do
  model=smollm2-135m
  if [[ $name != dense ]]; then
    model="$RUNS/$name"
    # shellcheck disable=SC2086
    [[ -f $model/report.json ]] || $S --quiet prune smollm2-135m ${PRUNE[$name]} "${COMMON[@]}" --out "$model"
  fi
  for task in pubmedqa meqsum; do
    [[ -f $OUT/$name.$task.json ]] || $S --quiet eval "$model" --tasks "$task" --sample 100 --seed 0 \
      --data-dir "$DATA" --overwrite --out "$OUT/$name.$task.json" --log-samples "$OUT/$name.$task.samples.jsonl"
  done
done
.venv/bin/python benchmarks/summarise_pruned.py "$RUNS" "$OUT" "${ORDER[@]}"
