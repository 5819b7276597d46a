#!/usr/bin/env bash
# Set up (if needed), lint (ruff), then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The deployment test runs the coordinator's gateway: nginx (Debian package), installed here if missing.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -q nginx-light >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q nginx-light >/dev/null; }) \
      && echo "installed nginx-light (the coordinator's gateway)"
  else
    echo "warning: nginx is not installed; the deployment test will fail (apt-get install nginx)" >&2
  fi
fi
export FLWR_HOME="$PWD/.flwr" MPLBACKEND=Agg
# one compute thread per process: two pytest workers and the Flower processes they start share the cores
# (torch's default, a thread per core in every process, oversubscribes them)
export OMP_NUM_THREADS=1
.venv/bin/ruff check . || exit 1  # (an && list would not stop the script under set -e)
.venv/bin/ruff format --check . >/dev/null || exit 1
# two workers: the deployment tests (one group, in order) beside the rest; the slowest tests are listed
exec .venv/bin/python -m pytest -q -n 2 --dist loadgroup --durations=12 "$@"
