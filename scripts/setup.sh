#!/usr/bin/env bash
# Create .venv at the repository root and install medsamkit with its test, documentation
# and lint tools (the "dev" extra: test + docs + ruff).
# Safe to re-run: an existing .venv is reused and pip only installs what is missing.
# Torch is pinned here (and only here): these releases install from this machine's disk.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[dev]"
