#!/usr/bin/env bash
# dciodvfy (Debian's dicom3tools) alone, the validator of vfa's DICOM outputs in tests/io/test_dicom_out.py:
# now part of `make oracles` (tests/install_oracles.sh, which `make test` depends on).
set -euo pipefail
ORACLES_RETRY=1 exec bash "$(dirname "$0")/../install_oracles.sh" dicom3tools
