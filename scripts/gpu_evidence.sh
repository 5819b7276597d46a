#!/usr/bin/env bash
# More confirmatory seeds of the pre-registered design (docs/preregistration.md) in one call on a lent GPU
# machine (the device tool: one NVIDIA H100/H200, 16 cores, no network), each finished job written as it goes.
#
# Here, once:   bash scripts/gpu_wheels.sh          (the wheels the device image lacks, into .whl/, ~40 MB)
# There:        device run, carry [".whl"], timeout_s 560, command:  bash scripts/gpu_evidence.sh 480
#
# One process drives the GPU (jobs one at a time, seeds 110-124), fourteen one-thread CPU workers take seeds
# 125-139; at the deadline (seconds, default 480) both stop and what finished comes back in $OUT:
# gpu.jsonl / cpu.jsonl (one record per job, as uharmony-evidence writes them) and a log. Jobs run seed by
# seed (all eight methods of a seed before the next), so that finished seeds are whole. The records are
# reported beside the CPU ones, not pooled with them (another device, other numerics: the page says so).
set -uo pipefail
cd "$(dirname "$0")/.."
deadline=${1:-480}
out=${OUT:-runs/gpu-evidence}
mkdir -p "$out"
source scripts/gpu_env.sh
export OMP_NUM_THREADS=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$out/log.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null | tee -a "$out/log.txt"
ev() { timeout "$deadline" python3 -m simulation.evidence.cli --stage confirm "$@"; }
ev --device cuda --workers 1 --out /tmp/ev-gpu --results-md /tmp/ev-gpu/page.md --seeds $(seq 110 124) >>"$out/log.txt" 2>&1 &
ev --device cpu --workers 14 --out /tmp/ev-cpu --results-md /tmp/ev-cpu/page.md --seeds $(seq 125 139) >>"$out/log.txt" 2>&1 &
wait
for d in gpu cpu; do
  [ -f /tmp/ev-$d/results.jsonl ] && cp /tmp/ev-$d/results.jsonl "$out/$d.jsonl"
done
grep -h '"kind": "train"' "$out"/*.jsonl 2>/dev/null | wc -l | xargs echo "jobs finished:" | tee -a "$out/log.txt"
