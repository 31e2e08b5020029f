#!/usr/bin/env bash
# Test-only headless browser for the `vfa review` end-to-end tests (tests/app/test_browser.py):
# Debian's chromium, driven by Playwright (pip, in the vfa venv) through executable_path;
# Playwright's own browser downloads are never used. A failed install is not fatal to `make test`:
# the browser tests then skip, saying why.
# Usage: bash tests/app/make_browser.sh [VENV_DIR]   (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv}"
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
fi
"$VENV/bin/python" -c "import playwright" 2>/dev/null || \
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check playwright
"$VENV/bin/python" -c "import playwright; print('playwright ok')"
chromium --version
