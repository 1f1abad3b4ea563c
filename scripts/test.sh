#!/usr/bin/env bash
# Install into .venv and run the whole test suite (real LiteMedSAM weights, real data
# from ../shared/data; nothing is downloaded, nothing is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
