# Sourced by the scripts for a lent GPU machine (scripts/gpu_evidence.sh, scripts/gpu_step.sh): the wheels the
# device image lacks (scripts/gpu_wheels.sh put them in .whl/) into /tmp/site, this checkout on PYTHONPATH,
# caches and Flower's home under /tmp.
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" UHARMONY_CACHE=/tmp/uharmony-cache PYTHONUNBUFFERED=1
export MPLBACKEND=Agg FLWR_HOME=/tmp/flwr
