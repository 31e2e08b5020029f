"""A full disk, a read-only folder, no permission: one line naming the path, and nothing half-written."""
import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import make_checkpoint, write_folder
from vfa.cli import main

ROOT = Path(__file__).resolve().parents[2]


def limited(max_bytes: int):
    """A child process whose files cannot grow past max_bytes: writes then fail with EFBIG, as on a full disk."""
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return preexec


def test_a_full_disk_during_predict_is_one_line_and_a_rerun_completes_it(tmp_path):
    model = make_checkpoint(tmp_path / "m.ckpt")
    data = write_folder(tmp_path / "d", n_per_class=8)
    out = tmp_path / "out" / "p.csv"
    res = subprocess.run([sys.executable, "-m", "vfa.cli", "predict", "--model", str(model), str(data),
                          "--out", str(out), "--device", "cpu"], capture_output=True, text=True,
                         preexec_fn=limited(400), cwd=ROOT)  # the CSV (16 rows) needs more than 400 bytes
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().endswith("File too large") and str(out.parent) in res.stderr
    assert "Traceback" not in res.stderr
    # only the resumable partial output and its job record: no finished-looking CSV, no temporary, no lock
    assert set(p.name for p in out.parent.iterdir()) <= {"p.csv.partial", ".p.csv.vfa-job.json"}
    again = subprocess.run([sys.executable, "-m", "vfa.cli", "predict", "--model", str(model), str(data),
                            "--out", str(out), "--device", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0, again.stderr
    frame = pd.read_csv(out)
    assert len(frame) == 16 and frame["file"].is_unique


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_read_only_no_permission_or_full_is_one_line(tmp_path, capsys, monkeypatch, err):
    import tempfile

    model = make_checkpoint(tmp_path / "m.ckpt")
    data = write_folder(tmp_path / "d", n_per_class=2)

    def refuse(*args, dir=None, **kwargs):
        raise OSError(err, os.strerror(err), str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert main(["predict", "--model", str(model), str(data), "--out", str(tmp_path / "p.csv")]) == 2
    line = capsys.readouterr().err
    assert line.splitlines()[-1] == f"vfa predict: error: {tmp_path}: {os.strerror(err)}"
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / ".p.csv.vfa-lock").exists()
