#!/usr/bin/env bash
# Main job on a fresh machine: install into .venv, then segment sample images from
# ../shared/data with the bundled LiteMedSAM weights and print the Dice reached.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/medsamkit demo "$@"
