"""The test oracles: real, independent parts that tests check vfa against (Debian's chromium, dciodvfy,
Orthanc, dcmtk, R's survival and cmprsk; Playwright; the test-only Keras env). `make oracles`
(tests/install_oracles.sh) installs them and `make test` depends on it.

A test that needs one asks for it here, never with its own skipif: where the oracle is missing the
test skips, saying why and how to install it (`make test` prints the reasons with -rs); with
VFA_REQUIRE_ORACLES=1 or CI=true (.ci/run sets the first) it fails instead, so an oracle cannot vanish
from CI silently. VFA_REQUIRE_ORACLES=0 turns that off even where CI=true."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAILED_STAMP = ROOT / ".venv" / ".vfa-oracles-failed"
INSTALL = "install them with `make oracles` (tests/install_oracles.sh)"
_SBIN = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])  # Orthanc is in /usr/sbin


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def required() -> bool:
    """True where a missing oracle is a failure: VFA_REQUIRE_ORACLES=1, or CI=true unless
    VFA_REQUIRE_ORACLES says otherwise."""
    explicit = os.environ.get("VFA_REQUIRE_ORACLES", "").strip()
    return _truthy(explicit) if explicit else _truthy(os.environ.get("CI"))


def earlier_failure() -> str | None:
    """Why the last `make oracles` failed (tests/install_oracles.sh's failure stamp), if it did."""
    try:
        text = FAILED_STAMP.read_text().strip()
    except OSError:
        return None
    return " ".join(text.splitlines()[1:]) or text


def require(name: str, reason: str) -> NoReturn:
    """The oracle `name` is missing because `reason`: skip, or fail where oracles are required."""
    msg = f"oracle {name} missing: {reason}; {INSTALL}"
    failed = earlier_failure()
    if failed:
        msg += (f". `make oracles` failed earlier and does not retry by itself ({failed}); retry: "
                "make oracles ORACLES_RETRY=1")
    if required():
        pytest.fail(f"{msg} [VFA_REQUIRE_ORACLES/CI: a missing oracle is a failure, not a skip]", pytrace=False)
    pytest.skip(msg)


def executable(name: str, *alternatives: str, package: str) -> str:
    """The path of the first of `name`, `alternatives` on PATH (or in the sbin directories)."""
    for exe in (name, *alternatives):
        path = shutil.which(exe) or shutil.which(exe, path=_SBIN)
        if path:
            return path
    require(name, f"`{name}` is not on PATH (Debian package {package})")


def chromium() -> str:
    """Debian's chromium, for the browser tests (driven by Playwright through executable_path)."""
    return executable("chromium", "chromium-browser", package="chromium")


def playwright():
    """playwright.sync_api.sync_playwright (pip, in .venv; Playwright's own browsers are never used)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        require("playwright", f"cannot import playwright.sync_api ({e}; pip install playwright into .venv)")
    return sync_playwright


def dciodvfy() -> str:
    """dicom3tools' DICOM validator."""
    return executable("dciodvfy", package="dicom3tools")


def orthanc() -> str:
    """The Orthanc PACS server binary."""
    return executable("Orthanc", package="orthanc")


def dcmtk(tool: str = "storescu") -> str:
    """One of dcmtk's command-line tools (storescu, findscu, movescu, dcmdump, ...)."""
    return executable(tool, package="dcmtk")


@functools.lru_cache(maxsize=None)
def _r_missing(packages: tuple[str, ...]) -> str | None:
    rscript = shutil.which("Rscript")
    if rscript is None:
        return "`Rscript` is not on PATH (Debian package r-base-core, pulled in by r-cran-survival)"
    for pkg in packages:
        try:
            res = subprocess.run([rscript, "-e", f"suppressMessages(library({pkg}))"], capture_output=True,
                                 text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return f"Rscript -e 'library({pkg})' took over 120 s"
        if res.returncode != 0:
            return (f"R package {pkg} does not load (Debian package r-cran-{pkg.lower()}): "
                    f"{res.stderr.strip()[-300:]}")
    return None


def rscript(*packages: str) -> str:
    """The path of Rscript, once each R package in `packages` loads (e.g. "survival", "cmprsk")."""
    missing = _r_missing(tuple(packages))
    if missing:
        require("R " + "+".join(packages or ("Rscript",)), missing)
    return shutil.which("Rscript")


def keras_python() -> Path:
    """The python of the test-only Keras env: $VFA_KERAS_PYTHON, or .venv-keras as `make oracles`
    (tests/keras/make_env.sh) builds it. Never installed from a test."""
    if os.environ.get("VFA_KERAS_PYTHON"):
        py = Path(os.environ["VFA_KERAS_PYTHON"])
        if not py.exists():
            require("keras", f"VFA_KERAS_PYTHON={py} does not exist")
        return py
    venv = ROOT / ".venv-keras"
    if not (venv / ".vfa-keras-installed").is_file() or not (venv / "bin" / "python").exists():
        require("keras", "no test-only Keras env in .venv-keras (tensorflow-cpu + tf-keras, "
                         "tests/keras/make_env.sh)")
    return venv / "bin" / "python"
