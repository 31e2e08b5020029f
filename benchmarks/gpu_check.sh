#!/usr/bin/env bash
# When a GPU is lent: train 2 epochs of the seed preset in bf16 and predict with every GPU backend,
# printing images/s, peak GPU memory and |delta p| against fp32 (benchmarks/gpu_check.py).
# Installs nothing: run `make venv` first. A few minutes on an H100/H200.
#   bash benchmarks/gpu_check.sh [OUT_DIR] [N_FILES]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" benchmarks/gpu_check.py "${1:-runs/gpu-check}" "${2:-20000}"
