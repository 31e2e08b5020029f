"""A training run killed (SIGKILL, SIGTERM) and resumed ends exactly as one never interrupted."""
import os
import signal
import subprocess
import sys
import time

from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.helpers import TINY

pytestmark = pytest.mark.slow

EPOCHS = 3
ROOT = Path(__file__).resolve().parents[2]


def train_args(phantom, out, epochs=EPOCHS, module="vfa.cli"):
    args = [sys.executable, "-m", module, "train", "--preset", "cpu-demo", "--train", str(phantom / "train"),
            "--val", str(phantom / "val"), "--out", str(out), "--epochs", str(epochs)]
    # the small CNN: 0.1 M parameters, so a run's three checkpoints take kilobytes, not 400 MB
    for item in TINY + ["data.num_workers=1", "model.backbone=vfa_cnn_small", "model.head=[]"]:  # + a worker
        args += ["--set", item]
    return args


def wait_for_rows(history, n, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if history.is_file() and history.read_text().count("\n") > n:  # header + n rows
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before {n} epoch(s): {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def weights(run):
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]


@pytest.fixture(scope="module")
def reference(tiny_phantom, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(train_args(tiny_phantom, run), check=True, capture_output=True)
    return run


FAULTS = {"SIGKILL mid-epoch": ("step:1:2:SIGKILL", -signal.SIGKILL),
          "SIGTERM mid-epoch": ("step:2:1:SIGTERM", 143),
          "SIGINT mid-epoch": ("step:1:0:SIGINT", 130),
          "SIGKILL while writing last.ckpt": ("write:last.ckpt:2:SIGKILL", -signal.SIGKILL)}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_killed_then_resumed_equals_uninterrupted(fault, tiny_phantom, reference, tmp_path):
    spec, code = FAULTS[fault]
    run = tmp_path / "run"
    res = subprocess.run(train_args(tiny_phantom, run, module="tests.faults.inject"), capture_output=True, text=True,
                         env={**os.environ, "VFA_FAULT": spec}, cwd=ROOT)
    assert res.returncode == code, res.stderr
    if code > 0:  # a signal vfa handles: one line saying what was kept and how to go on
        assert f"stopped by {fault.split()[0]}" in res.stderr and f"vfa train --resume {run}" in res.stderr
        assert "Traceback" not in res.stderr
    for name in ("best.ckpt", "last.ckpt"):  # a kill mid-write leaves the old file or the new, never half of one
        torch.load(run / "checkpoints" / name, weights_only=True, map_location="cpu")
    res = subprocess.run([sys.executable, "-m", "vfa.cli", "train", "--resume", str(run)], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert not list(run.rglob("*.tmp"))  # a killed write's temporary file is cleaned up on resume
    pd.testing.assert_frame_equal(pd.read_csv(run / "history.csv"), pd.read_csv(reference / "history.csv"))
    got, want = weights(run), weights(reference)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_resume_extends_from_the_last_epoch_and_refuses_going_back(tiny_phantom, reference, tmp_path):
    run = tmp_path / "run"
    subprocess.run(train_args(tiny_phantom, run, epochs=2), check=True, capture_output=True)
    before = pd.read_csv(run / "history.csv")
    res = subprocess.run([sys.executable, "-m", "vfa.cli", "train", "--resume", str(run), "--epochs", "1"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "already trained 2 epoch(s)" in res.stderr
    res = subprocess.run([sys.executable, "-m", "vfa.cli", "train", "--resume", str(run), "--epochs", "-1"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "optim.epochs must be" in res.stderr
    res = subprocess.run([sys.executable, "-m", "vfa.cli", "train", "--resume", str(run), "--epochs", str(EPOCHS)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    history = pd.read_csv(run / "history.csv")
    pd.testing.assert_frame_equal(history.iloc[:2], before)  # appended: the first rows are untouched
    pd.testing.assert_frame_equal(history, pd.read_csv(reference / "history.csv"))


def test_a_damaged_last_checkpoint_falls_back_to_the_previous(tiny_phantom, reference, tmp_path):
    run = tmp_path / "run"
    subprocess.run(train_args(tiny_phantom, run, epochs=2), check=True, capture_output=True)
    last = run / "checkpoints" / "last.ckpt"
    assert (run / "checkpoints" / "last.ckpt.prev").is_file()
    last.write_bytes(last.read_bytes()[:1000])  # bit rot, a bad copy
    res = subprocess.run([sys.executable, "-m", "vfa.cli", "train", "--resume", str(run), "--epochs", str(EPOCHS)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "not a loadable vfa checkpoint" in res.stdout + res.stderr and "weights_only=False" not in res.stderr
    pd.testing.assert_frame_equal(pd.read_csv(run / "history.csv"), pd.read_csv(reference / "history.csv"))


def test_two_trainings_into_one_folder_the_second_is_refused(tiny_phantom, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(train_args(tiny_phantom, run, epochs=500), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    wait_for_rows(run / "history.csv", 0, first)  # it holds the folder
    second = subprocess.run(train_args(tiny_phantom, run, epochs=1) + ["--force"], capture_output=True, text=True)
    assert second.returncode == 2 and "being written by another vfa process" in second.stderr
    assert first.poll() is None  # the first goes on, untouched
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 143
    assert "epochs: 500" in (run / "config.yaml").read_text()
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == list(range(len(pd.read_csv(run / "history.csv"))))


def test_a_stale_lock_is_taken_over(tiny_phantom, tmp_path):
    import json
    import platform

    run = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".run.vfa-lock").write_text(json.dumps({"pid": dead.pid, "host": platform.node()}))
    res = subprocess.run(train_args(tiny_phantom, run, epochs=1), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / ".run.vfa-lock").exists()
