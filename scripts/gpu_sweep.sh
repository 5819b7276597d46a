#!/usr/bin/env bash
# The ablation sweep of docs/method.md: eight federated runs (in-process transport) side by side on a GPU,
# plus the training-step benchmark. Usage: bash scripts/gpu_sweep.sh OUTDIR   (needs the project installed)
set -euo pipefail
out=${1:-runs/gpu_sweep}
mkdir -p "$out"
run() { n=$1; shift; uharmony-sim --rounds 20 --run-dir "$out/$n" --set eval-every=2 device=cuda "$@" > "$out/$n.log" 2>&1; }
run uh_ratio_K2 poly-order=2 &
run uh_ratio_K1 poly-order=1 &
run uh_ratio_K2_localcoef poly-order=2 site-local=stats+coefficients &
run uh_affine_K2_lr1e-3 poly-order=2 restore=affine lr=0.001 &
run uh_affine_K2_lr2e-3 poly-order=2 restore=affine &
run uh_none_K2 poly-order=2 restore=none &
run fedavg strategy=fedavg &
run fedbn strategy=fedbn &
wait
for k in 1 2; do
  python -W ignore -m simulation.step_benchmark --device cuda --patch 128 --precisions fp32 --layouts contiguous \
    --steps 10 --order $k --out "$out/step"
done
grep -h "round 20/20" "$out"/*.log || true
