#!/usr/bin/env bash
# Test-only Keras environment for the .h5 import equivalence test (tests/test_keras_import.py).
# TensorFlow is never a vfa dependency: this venv only generates reference models and predictions.
# Usage: bash tests/keras/make_env.sh [VENV_DIR]   (default: .venv-keras in the repository root)
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-keras}"
STAMP="$VENV/.vfa-keras-installed"
PY="${PY:-python3}"
[ -f "$STAMP" ] && exit 0
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check tensorflow-cpu tf-keras h5py pillow scipy  # scipy: ImageDataGenerator (make bench)
"$VENV/bin/python" -c "import tf_keras, h5py; print('tf_keras', tf_keras.__version__)"
touch "$STAMP"
