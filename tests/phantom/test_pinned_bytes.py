"""The existing presets keep their bytes (issue 27): the clinical preset lives in its own modules, and
these digests, recorded before it was added, pin what `vfa synth --preset cpu-demo|vertebra-demo` writes.

Pixels are hashed decoded (not the PNG bytes, which follow the zlib build) together with the raw bytes of
manifest.csv and vertebrae.csv. A deliberate change to the existing phantom updates these digests in the
same commit and says so."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vfa.phantom.synth import phantom_config, synthesize

PINNED = {   # (preset, n, size, seed) -> SHA-256
    ("cpu-demo", 24, (128, 80), 0): "a130c25f5f681614456819fcd494d41be38b7880a60197c508c74ca61d72cd17",
    ("vertebra-demo", 12, (160, 96), 3): "875a0435282f0affd0dff092363d0810af3bc6016385c21b5e64737569468b25",
}


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.suffix == ".png":
            a = np.asarray(Image.open(p))
            h.update(p.relative_to(root).as_posix().encode())
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
        elif p.name in ("manifest.csv", "vertebrae.csv"):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("key", list(PINNED))
def test_existing_presets_keep_their_bytes(tmp_path, key):
    preset, n, size, seed = key
    synthesize(tmp_path / "d", phantom_config(preset, n=n, size=size, seed=seed, workers=1), progress=False)
    assert digest(tmp_path / "d") == PINNED[key]
