"""Fixtures for `vfa node` against real DICOM software (tests/node/support.py): phantom inputs and a
checkpoint, DCMTK's storescp as a destination. The oracles come from tests/oracles.py: missing ones
skip locally and fail under CI=true / VFA_REQUIRE_ORACLES=1."""
from __future__ import annotations

import pytest

from tests import oracles
from tests.helpers import make_checkpoint
from tests.node.support import Proc, listening, free_port, wait_for


@pytest.fixture(scope="session")
def node_inputs(tmp_path_factory):
    """Four phantom DICOM images (fake identifiers, one study each) and a random-weight checkpoint."""
    from vfa.phantom.synth import PhantomConfig, synthesize

    root = tmp_path_factory.mktemp("node_inputs")
    synthesize(root / "ph", PhantomConfig(n=4, size=(160, 96), prevalence=0.5, seed=3, workers=1,
                                          splits=(0.0, 0.0, 1.0), format="dicom"), progress=False, force=True)
    images = sorted((root / "ph" / "test").rglob("*.dcm"))
    return {"images": images, "ckpt": make_checkpoint(root / "m.ckpt"), "root": root}


@pytest.fixture
def storescp(tmp_path):
    """DCMTK's storescp as the results' destination (AE DEST); yields (AET@HOST:PORT, its folder)."""
    exe = oracles.dcmtk("storescp")
    port, out = free_port(), tmp_path / "dest"
    out.mkdir()
    proc = Proc([exe, "-od", str(out), "-aet", "DEST", str(port)], tmp_path / "storescp.log")
    wait_for(lambda: listening(port), 30, "storescp to listen")
    yield f"DEST@127.0.0.1:{port}", out
    proc.stop()


