#!/usr/bin/env bash
# The browser tests' oracles alone (Debian's chromium, playwright into .venv): now part of `make oracles`
# (tests/install_oracles.sh, which `make test` depends on). Usage: bash tests/app/make_browser.sh [VENV_DIR]
set -euo pipefail
[ $# -gt 0 ] && export VENV="$1"
ORACLES_RETRY=1 exec bash "$(dirname "$0")/../install_oracles.sh" chromium playwright
