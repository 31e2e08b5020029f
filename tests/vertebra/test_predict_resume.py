"""`vfa predict` with a per-vertebra model killed (SIGKILL) at chosen points and run again ends
with the same two tables as a run never interrupted: every image once, every body of it once.

Faults (tests/faults/inject.py, `rows:NTH`): each batch appends its bodies (odd writes) and then
its image rows (even writes), so NTH=3 kills after the second batch's bodies are on disk but
before its images are: those bodies must be dropped and read again, not duplicated."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from vfa import checkpoint, config
from vfa.registry import FAMILIES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.size=[192,112]", "vertebra.detector_size=[96,56]", "vertebra.crop_size=32", "vertebra.width=16",
        "vertebra.detector_backbone=resnet10t", "vertebra.landmark_backbone=resnet10t"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from vfa.phantom.synth import PhantomConfig, synthesize

    root = tmp_path_factory.mktemp("vresume")
    synthesize(root / "data", PhantomConfig(n=10, size=(192, 112), prevalence=0.5, seed=3, workers=1),
               progress=False, force=True)
    cfg = config.resolve("vertebra-demo", overrides=config.parse_set(TINY))
    torch.manual_seed(0)
    net = FAMILIES.of(cfg).step("build")(cfg)
    net.detector.heads["heat"][-1].bias.data.fill_(4.0)  # random weights that find (random) bodies
    return {"ckpt": str(checkpoint.save(root / "v.ckpt", net, cfg, force=True)), "data": str(root / "data")}


def predict(job, out, fault=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    module = "vfa.cli"
    if fault:
        env["VFA_FAULT"], module = fault, "tests.faults.inject"
    return subprocess.run([sys.executable, "-m", module, "predict", "--model", job["ckpt"], job["data"],
                           "--out", str(out), "--device", "cpu", "--batch-size", "4"],
                          env=env, cwd=ROOT, capture_output=True, text=True)


def tables(out: Path):
    images = pd.read_csv(out).drop(columns=["file_mtime_ns"])
    bodies = pd.read_csv(out.with_name("vertebrae.csv"))
    return images.sort_values("file").reset_index(drop=True), \
        bodies.sort_values(["file", "level"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "p.csv"
    done = predict(job, out)
    assert done.returncode == 0, done.stderr
    return tables(out)


@pytest.mark.parametrize("fault", ["rows:3:SIGKILL", "rows:4:SIGKILL", "torn:3:SIGKILL"])
def test_killed_then_rerun_equals_uninterrupted(fault, job, reference, tmp_path):
    out = tmp_path / "p.csv"
    killed = predict(job, out, fault)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists() and out.with_name("p.csv.partial").exists()
    again = predict(job, out)
    assert again.returncode == 0, again.stderr
    assert "before" in again.stderr
    images, bodies = tables(out)
    ref_images, ref_bodies = reference
    assert images["file"].is_unique and len(images) == len(ref_images)
    pd.testing.assert_frame_equal(images, ref_images, check_exact=False, atol=1e-6)
    pd.testing.assert_frame_equal(bodies, ref_bodies, check_exact=False, atol=2e-3)
    assert (images["predicted"] == (images["max_grade"] >= 1)).all()


def test_force_does_not_replace_a_foreign_vertebrae_csv(job, tmp_path):
    notes = tmp_path / "vertebrae.csv"
    notes.write_text("patient,comment\n1,keep me\n")
    done = subprocess.run([sys.executable, "-m", "vfa.cli", "predict", "--model", job["ckpt"], job["data"],
                           "--out", str(tmp_path / "p.csv"), "--device", "cpu", "--force"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "not a vfa vertebrae table" in done.stderr, done.stderr
    assert notes.read_text() == "patient,comment\n1,keep me\n" and not (tmp_path / "p.csv").exists()
