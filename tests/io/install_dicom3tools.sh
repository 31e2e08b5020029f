#!/usr/bin/env bash
# dciodvfy (Debian's dicom3tools): the independent validator of vfa's DICOM outputs in the tests
# (tests/io/test_dicom_out.py). Installed by `make test` when missing; a test dependency only.
# Without it (no apt-get, no root) the validator tests skip, saying why.
set -euo pipefail
command -v dciodvfy >/dev/null 2>&1 && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo -n"
$SUDO apt-get install -y -q dicom3tools >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dicom3tools >/dev/null; }
command -v dciodvfy
