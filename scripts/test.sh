#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FLWR_HOME="$PWD/.flwr" MPLBACKEND=Agg
exec .venv/bin/python -m pytest -q "$@"
