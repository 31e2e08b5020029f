import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # two xdist workers on two cores: don't oversubscribe; before torch

import pytest  # noqa: E402

from tests.helpers import write_folder  # noqa: E402


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
