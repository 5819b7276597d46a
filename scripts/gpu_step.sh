#!/usr/bin/env bash
# The training step on a lent GPU, in one short call (docs/performance.md): the step benchmark at the product's
# size and at the benchmark's GPU size (fp32 and CUDA AMP bf16, both layouts: step time, GFLOP/s, the fraction of
# the device's dense matmul rate, voxels per second, peak GPU memory), then a 2-round federated run at the GPU
# size in bf16 for the time of a real round. Each result is written to $OUT as it is made.
#
# Here, once:   bash scripts/gpu_wheels.sh          (the wheels the device image lacks, into .whl/)
# There:        device run, carry [".whl"], timeout_s 420, command:  bash scripts/gpu_step.sh 360
set -uo pipefail
cd "$(dirname "$0")/.."
deadline=${1:-360}
out=${OUT:-runs/gpu-step}
mkdir -p "$out"
source scripts/gpu_env.sh
start=$(date +%s)
left() { echo $((deadline - ($(date +%s) - start))); }
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null | tee "$out/log.txt"
timeout "$(left)" python3 -m simulation.step_benchmark --device cuda --sizes main gpu --steps 20 --repeats 3 \
  --out "$out/step" 2>&1 | grep -v Warning | tee -a "$out/log.txt"
if [ "$(left)" -gt 60 ]; then
  timeout "$(left)" python3 -m simulation.runner --rounds 2 --run-dir "$out/round" --set device=cuda precision=bf16 \
    patch-size=64 filters=32,64,128,256 synth-spacing=1.5 spacing=1.5 local-steps=60 eval-every=2 \
    >>"$out/log.txt" 2>&1
  grep -h "round [0-9]*/2" "$out/log.txt" | tail -2
fi
echo "finished in $(( $(date +%s) - start )) s" | tee -a "$out/log.txt"
