"""The test oracles cannot vanish silently: tests/oracles.py skips where one is missing, but fails under
VFA_REQUIRE_ORACLES=1 or CI=true (.ci/run); and tests/install_oracles.sh (`make oracles`) does not retry
a failed install on every run, yet fails loudly where oracles are required."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import oracles

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "install_oracles.sh"


@pytest.fixture
def lenient(monkeypatch):
    monkeypatch.delenv("VFA_REQUIRE_ORACLES", raising=False)
    monkeypatch.delenv("CI", raising=False)


@pytest.mark.parametrize("env, required", [
    ({}, False),
    ({"VFA_REQUIRE_ORACLES": "1"}, True),
    ({"CI": "true"}, True),
    ({"CI": "true", "VFA_REQUIRE_ORACLES": "0"}, False),  # an explicit 0 wins over CI
    ({"VFA_REQUIRE_ORACLES": ""}, False),
    ({"CI": "false"}, False),
])
def test_required_from_the_environment(monkeypatch, lenient, env, required):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert oracles.required() is required


def test_require_skips_with_the_reason(lenient):
    with pytest.raises(pytest.skip.Exception) as e:
        oracles.require("frobnicator", "not on PATH")
    assert "frobnicator" in str(e.value) and "not on PATH" in str(e.value) and "make oracles" in str(e.value)


@pytest.mark.parametrize("var", [("VFA_REQUIRE_ORACLES", "1"), ("CI", "true")])
def test_require_fails_where_oracles_are_required(monkeypatch, lenient, var):
    monkeypatch.setenv(*var)
    with pytest.raises(pytest.fail.Exception) as e:
        oracles.require("frobnicator", "not on PATH")
    assert "frobnicator" in str(e.value) and "a missing oracle is a failure" in str(e.value)


def test_missing_executable_and_keras_env_go_through_require(monkeypatch, lenient, tmp_path):
    with pytest.raises(pytest.skip.Exception, match="Debian package nothing-here"):
        oracles.executable("vfa-no-such-tool", package="nothing-here")
    monkeypatch.setenv("VFA_KERAS_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(pytest.skip.Exception, match="VFA_KERAS_PYTHON"):
        oracles.keras_python()
    monkeypatch.setenv("VFA_REQUIRE_ORACLES", "1")
    with pytest.raises(pytest.fail.Exception):
        oracles.executable("vfa-no-such-tool", package="nothing-here")


def test_the_reason_of_an_earlier_failed_install_is_given(monkeypatch, lenient, tmp_path):
    stamp = tmp_path / ".vfa-oracles-failed"
    stamp.write_text("2025-01-01T00:00:00Z\napt-get install chromium failed: no network\n")
    monkeypatch.setattr(oracles, "FAILED_STAMP", stamp)
    with pytest.raises(pytest.skip.Exception) as e:
        oracles.require("chromium", "not on PATH")
    assert "no network" in str(e.value) and "ORACLES_RETRY=1" in str(e.value)


def test_a_test_needing_a_missing_oracle_is_reported_skipped_or_failed(tmp_path):
    """End to end, in a pytest run of its own: skipped with the reason under -rs; failed (exit 1) where required."""
    (tmp_path / "test_needs_oracle.py").write_text(
        "from tests import oracles\n\n"
        "def test_it():\n"
        "    oracles.executable('vfa-no-such-tool', package='nothing-here')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VFA_REQUIRE_ORACLES", "CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:xdist", "-p", "no:cacheprovider",
           str(tmp_path / "test_needs_oracle.py")]
    lenient_run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert lenient_run.returncode == 0, lenient_run.stdout + lenient_run.stderr
    assert "1 skipped" in lenient_run.stdout and "SKIPPED" in lenient_run.stdout
    assert "oracle vfa-no-such-tool missing" in lenient_run.stdout  # -rs prints the reason
    strict = subprocess.run(cmd, capture_output=True, text=True, env={**env, "VFA_REQUIRE_ORACLES": "1"},
                            cwd=tmp_path, timeout=120)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "1 failed" in strict.stdout and "a missing oracle is a failure" in strict.stdout


# ------------------------------------------------------------------- tests/install_oracles.sh
def _install_keras(tmp_path, **env):
    """install_oracles.sh for the Keras env alone, into an empty KERAS_VENV, with a PY that records that it
    was called and fails: an install attempt that fails at once, without network."""
    calls = tmp_path / "calls"
    fake_py = tmp_path / "fake-python"
    fake_py.write_text(f"#!/bin/sh\necho called >> {calls}\nexit 1\n")
    fake_py.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("VFA_REQUIRE_ORACLES", "CI", "ORACLES_RETRY")}
    run_env = {**base, "VENV": str(tmp_path / "venv"), "KERAS_VENV": str(tmp_path / "keras"), "PY": str(fake_py),
               **env}
    res = subprocess.run(["bash", str(SCRIPT), "keras"], capture_output=True, text=True, env=run_env, timeout=120)
    n = len(calls.read_text().splitlines()) if calls.exists() else 0
    return res, n


def test_install_failure_is_stamped_and_not_retried_until_asked(tmp_path):
    stamp = tmp_path / "venv" / ".vfa-oracles-failed"
    res, calls = _install_keras(tmp_path)
    assert res.returncode == 0 and calls == 1, res.stderr  # not fatal to `make test` ...
    assert "INSTALL FAILED" in res.stderr and "make_env.sh" in stamp.read_text()  # ... but loud, and recorded
    res, calls = _install_keras(tmp_path)
    assert res.returncode == 0 and calls == 1, res.stderr  # the next run does not try again
    assert "NOT retrying" in res.stderr and "ORACLES_RETRY=1" in res.stderr
    res, calls = _install_keras(tmp_path, ORACLES_RETRY="1")
    assert res.returncode == 0 and calls == 2, res.stderr  # asked to: it does


@pytest.mark.parametrize("var", [("VFA_REQUIRE_ORACLES", "1"), ("CI", "true")])
def test_install_failure_is_fatal_where_oracles_are_required(tmp_path, var):
    stamp = tmp_path / "venv" / ".vfa-oracles-failed"
    stamp.parent.mkdir()
    stamp.write_text("an earlier failure\n")  # required: retried regardless
    res, calls = _install_keras(tmp_path, **dict([var]))
    assert res.returncode != 0 and calls == 1, res.stderr
    assert "a missing oracle is a failure" in res.stderr and stamp.read_text() == "an earlier failure\n"


def test_r_package_that_does_not_load_goes_through_require(lenient):
    with pytest.raises(pytest.skip.Exception, match="vfaNoSuchPackage|Rscript"):
        oracles.rscript("vfaNoSuchPackage")


# ------------------------------------------------------------------- the oracles themselves
ORACLES = {
    "chromium": lambda: [oracles.chromium(), "--version"],
    "playwright": lambda: oracles.playwright() and [sys.executable, "-c", "import playwright.sync_api"],
    "dciodvfy": lambda: [oracles.dciodvfy(), "/dev/null"],  # its complaints about the file: exit status 0 or 1
    "orthanc": lambda: [oracles.orthanc(), "--version"],
    "dcmtk": lambda: [oracles.dcmtk("storescu"), "--version"],
    "R": lambda: [oracles.rscript("survival", "cmprsk"), "-e", "library(survival); library(cmprsk)"],
    "keras": lambda: [str(oracles.keras_python()), "-c", "import tf_keras, h5py"],
}


@pytest.mark.parametrize("name", list(ORACLES))
def test_oracle_is_there_and_runs(name):
    """Every oracle, whether or not a test uses it yet: present and runs (skips where missing; in CI, fails)."""
    cmd = ORACLES[name]()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode in ((0, 1) if name == "dciodvfy" else (0,)), (cmd, res.stdout[-2000:], res.stderr[-2000:])
