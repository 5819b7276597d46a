#!/usr/bin/env bash
# Download, here, the wheels scripts/gpu_evidence.sh needs on the GPU machine (Python 3.12 with torch, numpy,
# scipy, scikit-learn, matplotlib, tqdm, einops, grpcio and protobuf already there; no network there).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d .whl monai==1.6.1 flwr==1.41.0 nibabel==5.4.2 nilearn==0.13.1 cryptography pycryptodome iterators \
  tomli-w pathspec typer click rich shellingham
du -sh .whl
