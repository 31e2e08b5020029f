#!/usr/bin/env bash
# When a GPU is lent: train 2 epochs of the seed preset in bf16 with batch augmentation on the GPU,
# and 2 of the per-vertebra `vertebra` preset (training images/s, peak GPU memory, the data loader's share of step time), then predict with
# every GPU backend (images/s, peak GPU memory, |delta p| against fp32; the verified auto's own check); benchmarks/gpu_check.py.
# VFA_GPU_CHECK_SMOKE=1 runs the training check's code tiny on CPU, to check the script itself.
# Installs nothing: run `make venv` first. A few minutes on an H100/H200.
#   bash benchmarks/gpu_check.sh [OUT_DIR] [N_FILES]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" benchmarks/gpu_check.py "${1:-runs/gpu-check}" "${2:-20000}"
