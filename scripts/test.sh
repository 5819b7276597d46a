#!/usr/bin/env bash
# Set up (if needed), lint (ruff), then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FLWR_HOME="$PWD/.flwr" MPLBACKEND=Agg
.venv/bin/ruff check . && .venv/bin/ruff format --check . >/dev/null
exec .venv/bin/python -m pytest -q "$@"
