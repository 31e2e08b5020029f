import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # two xdist workers on two cores: don't oversubscribe; before torch

import pytest  # noqa: E402

from tests import oracles  # noqa: E402
from tests.helpers import write_folder  # noqa: E402


def pytest_report_header(config):
    """Whether a missing test oracle (tests/oracles.py) skips or fails, and why `make oracles` last failed."""
    mode = ("a missing one FAILS (VFA_REQUIRE_ORACLES=1 or CI=true)" if oracles.required() else
            "a missing one skips, saying why (-rs); VFA_REQUIRE_ORACLES=1 makes it a failure")
    lines = [f"test oracles: {mode}"]
    failed = oracles.earlier_failure()
    if failed:
        lines.append(f"test oracles: `make oracles` failed earlier ({failed}); retry: make oracles ORACLES_RETRY=1")
    return lines


@pytest.fixture(autouse=True, scope="session")
def _vfa_cache(tmp_path_factory):
    """Exports and compiled kernels (vfa.runs.cache_dir) go to this session's temp folder, not the user's
    ~/.cache/vfa: a test never sees, nor leaves, a cached engine of another run."""
    os.environ["VFA_CACHE"] = str(tmp_path_factory.getbasetemp() / "vfa-cache")
    yield


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory):
    """A few dozen low-resolution phantom images, shared by the end-to-end tests."""
    from vfa.phantom.synth import PhantomConfig, synthesize

    out = tmp_path_factory.mktemp("phantom")
    synthesize(out, PhantomConfig(n=48, size=(160, 96), prevalence=0.5, seed=1, workers=1), progress=False,
               force=True)
    return out
