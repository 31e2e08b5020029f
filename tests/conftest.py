import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("OMP_NUM_THREADS", "1")  # two xdist workers on two cores: don't oversubscribe


def write_folder(root, n_per_class=4, size=(48, 32), seed=0, classes=("norm", "frac")):
    """A class-folder set of tiny gray PNGs; frac images are brighter so a model can tell them apart."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = (rng.random(size) * 120 + 60 * label).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{name}_{i:03d}.png")
    return root


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory):
    """A few dozen low-resolution phantom images, shared by the end-to-end tests."""
    from vfa.synth import PhantomConfig, synthesize

    out = tmp_path_factory.mktemp("phantom")
    synthesize(out, PhantomConfig(n=48, size=(160, 96), prevalence=0.5, seed=1, workers=1), progress=False,
               force=True)
    return out
