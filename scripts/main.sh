#!/usr/bin/env bash
# Set up (if needed) and run the main job: `flwr run .` on the embedded federation (generated on first
# use). Extra arguments go to `flwr run`, e.g.  bash scripts/main.sh -c "strategy='fedavg'"
# Exits non-zero unless the run's final status is finished:completed and it wrote real results (a site trained, a
# final Dice, its plot). Relative data-root / run-dir are taken from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FLWR_HOME="$PWD/.flwr" PATH="$PWD/.venv/bin:$PATH" MPLBACKEND=Agg
# Run the app in this venv: Flower would otherwise `uv sync` the app's dependencies into a fresh
# environment per run, pulling the CUDA build of torch (GBs) on a CPU machine.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
port=${FLWR_LOCAL_SUPERLINK_HTTP_API_PORT:-39091}
control=${FLWR_LOCAL_CONTROL_API_PORT:-39093}
# the run config given with -c / --run-config, each one (the same strings go to flwr run; later ones win)
rc=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    -c|--run-config) rc+=(-c "${args[i+1]:-}") ;;
    --run-config=*) rc+=(-c "${args[i]#--run-config=}") ;;
  esac
done
python -m simulation.main_job prepare ${rc[@]+"${rc[@]}"}
sites=$(python -m simulation.main_job sites ${rc[@]+"${rc[@]}"})
# data-root and run-dir as absolute paths: the apps read and write the folders meant here, whatever their cwd
paths=$(python -m simulation.main_job paths ${rc[@]+"${rc[@]}"})
# Flower >= 1.41 keeps connections in $FLWR_HOME/config.toml: a managed local SuperLink running the
# simulation engine with one SuperNode per site of the run's federation. One core and one compute thread
# per ClientApp, so sites train side by side: this model's training step is about as fast on one thread as
# on two (measured on the 2-core AMD EPYC, AVX2), so two sites at once nearly halve a round.
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "local-simulation"

[superlink.local-simulation]
address = ":local:"
options.num-supernodes = $sites
options.backend.name = "ray"
options.backend.client-resources.num-cpus = 1
TOML
export OMP_NUM_THREADS=1
ours() { pgrep -f "flower-superlink.*--log-file $FLWR_HOME/" || true; }
if [ -z "$(ours)" ] && python - "$port" "$control" <<'PY'
import socket, sys
def taken(port):
    s = socket.socket(); s.settimeout(0.5)
    return s.connect_ex(("127.0.0.1", int(port))) == 0
sys.exit(0 if any(taken(p) for p in sys.argv[1:]) else 1)
PY
then
  echo "error: a process that this checkout did not start listens on 127.0.0.1:$port or :$control (a SuperLink of" >&2
  echo "       another checkout or of a consortium, perhaps); flwr run would submit to it. Either give this job" >&2
  echo "       free ports: FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=39191 FLWR_LOCAL_CONTROL_API_PORT=39193 bash scripts/main.sh" >&2
  echo "       or, if it is yours and idle, stop that one process by its id (ss -ltnp shows it) and retry." >&2
  exit 1
fi
trap 'pids=$(ours); [ -n "$pids" ] && kill $pids 2>/dev/null || true' EXIT
run_id=$(python -c "import uuid; print(uuid.uuid4().hex)")  # the run's records carry it; check reads only those
flwr run . --stream "$@" -c "run-id='$run_id'" -c "$paths"
python -m simulation.main_job check ${rc[@]+"${rc[@]}"} -c "$paths" --run-id "$run_id"
