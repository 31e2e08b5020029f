"""A run killed with SIGKILL while its DataLoader workers are alive leaves no lock behind: rerun at
once (as systemd or a SLURM requeue would), it resumes. The workers, forked from the killed process,
live on for seconds (they notice their parent's death only by polling); they must not hold its lock."""
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import TINY, make_checkpoint, write_folder
from vfa import runs
from vfa.runs import lock

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@contextlib.contextmanager
def killed(args, spec, log):
    """Run `vfa args` until the fault `spec` stops it (SIGSTOP, exactly there: no race), freeze its
    DataLoader workers, kill -9 it; inside the `with`, its orphaned workers live on (as they do for up
    to seconds after a real kill -9, until they notice), holding whatever they inherited."""
    with open(log, "w") as f:  # not a pipe: the orphans hold it, and nothing here waits for them
        proc = subprocess.Popen([sys.executable, "-m", "tests.faults.inject", *args], stdout=f, stderr=f,
                                env={**ENV, "VFA_FAULT": spec}, cwd=ROOT)
    workers = []
    try:
        t0 = time.time()
        while _state(proc.pid) != "T":
            assert proc.poll() is None and time.time() - t0 < 300, Path(log).read_text()[-3000:]
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert workers, "no DataLoader workers to outlive the kill"
        for w in workers:
            os.kill(w, signal.SIGSTOP)
        proc.kill()
        assert proc.wait(timeout=60) == -signal.SIGKILL
        yield
    finally:
        proc.kill()
        for w in workers:  # the orphans this test froze
            try:
                os.kill(w, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _vfa(args):
    return subprocess.run([sys.executable, "-m", "vfa.cli", *args], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=300)


def test_predict_with_workers_resumes_right_after_kill_9(tmp_path):
    ckpt, data = make_checkpoint(tmp_path / "m.ckpt"), write_folder(tmp_path / "imgs", n_per_class=15, seed=3)
    out = tmp_path / "p.csv"
    args = ["predict", "--model", str(ckpt), str(data), "--out", str(out), "--batch-size", "2", "--backend",
            "torch", "--device", "cpu", "--workers", "2"]
    with killed(args, "rows:2:SIGSTOP", tmp_path / "killed.log"):
        assert (tmp_path / "p.csv.partial").is_file()
        r = _vfa([*args, "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    got = pd.read_csv(out)
    assert len(got) == 30 and got["file"].is_unique


@pytest.mark.slow
def test_training_with_loader_workers_resumes_right_after_kill_9(tiny_phantom, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--preset", "cpu-demo", "--train", str(tiny_phantom / "train"), "--val",
            str(tiny_phantom / "val"), "--out", str(run), "--epochs", "2"]
    for item in TINY + ["data.num_workers=2", "model.backbone=vfa_cnn_small", "model.head=[]"]:
        args += ["--set", item]
    with killed(args, "step:1:1:SIGSTOP", tmp_path / "killed.log"):
        r = _vfa(["train", "--resume", str(run)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [0, 1]


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """In-process: a child forked while the lock is held (as a DataLoader worker is) outlives its
    parent's hold, which ends as a kill ends it (the fd closed, the file left); the lock is free at
    once, and the child's copy of the lock object cannot remove the next holder's file."""
    target = tmp_path / "out"
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    held = lock(target).__enter__()
    pid = os.fork()
    if pid == 0:  # the child (its at-fork hooks have run): say so, wait, run the inherited __exit__, exit
        os.write(ready_w, b"x")
        os.read(r, 1)
        held.__exit__(None, None, None)
        os._exit(0)
    os.read(ready_r, 1)
    for fd in (r, ready_r, ready_w):
        os.close(fd)
    os.close(held.fd)  # the parent dies: its descriptor goes, the lock file stays
    runs._HELD.discard(held.fd)
    try:
        with lock(target) as again:  # "being written by another vfa process" if the child kept the lock
            os.write(w, b"x")
            os.waitpid(pid, 0)
            assert json.loads(again.path.read_text())["pid"] == os.getpid()
    finally:
        os.close(w)


def _held_for_the_dead(tmp_path):
    """A lock file naming an ended process of this host, flocked by this test (as an orphan would)."""
    import fcntl

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / ".out.vfa-lock"
    path.write_text(json.dumps({"pid": dead.pid, "host": platform.node(), "started": "then"}))
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return dead.pid, fd


def test_a_lock_held_for_a_dead_process_says_so(tmp_path, monkeypatch):
    """A lock whose recorded owner has ended, but that something still holds, names the PID as no
    longer running (after a grace period for orphans to end), not as a writer to wait for."""
    monkeypatch.setattr(lock, "ORPHAN_GRACE_S", 0.3)
    pid, fd = _held_for_the_dead(tmp_path)
    try:
        with pytest.raises(FileExistsError, match=f"PID {pid} .*no longer running.*still holds"):
            with lock(tmp_path / "out"):
                pass
    finally:
        os.close(fd)


def test_a_lock_left_to_an_orphan_is_taken_when_it_ends(tmp_path):
    import threading

    pid, fd = _held_for_the_dead(tmp_path)
    threading.Timer(0.5, os.close, (fd,)).start()  # the orphan ends half a second later
    with lock(tmp_path / "out") as got:
        assert json.loads(got.path.read_text())["pid"] == os.getpid()
