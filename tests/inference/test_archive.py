"""`vfa predict` at archive scale: streamed per batch, killed and resumed, sharded over processes."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import make_checkpoint, write_folder
from tests.inference.test_sharded import free_port
from vfa.cli import main
from vfa.inference.archive import predict_to_file
from vfa.inference.predict import predict_files

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    return {"ckpt": make_checkpoint(root / "m.ckpt"), "data": write_folder(root / "imgs", n_per_class=15, seed=3),
            "root": root}


def _vfa(args, fault=None, extra_env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    if fault:
        env["VFA_FAULT"] = fault
        cmd = [sys.executable, "-m", "tests.faults.inject", *args]
    else:
        cmd = [sys.executable, "-m", "vfa.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def _predict_args(job, out, *more):
    return ["predict", "--model", str(job["ckpt"]), str(job["data"]), "--out", str(out), "--batch-size", "4",
            "--backend", "torch", "--device", "cpu", "--workers", "0", *more]


def test_streamed_output_equals_the_in_memory_table(job, tmp_path):
    out = tmp_path / "p.csv"
    s = predict_to_file(job["ckpt"], [job["data"]], out, batch_size=4, backend="torch", device="cpu", workers=2)
    assert (s.before, s.now, s.skipped) == (0, 30, [])
    ref = predict_files(job["ckpt"], [job["data"]], batch_size=7, backend="torch", device="cpu", num_workers=0)
    got = pd.read_csv(out)
    assert got["file"].tolist() == ref["file"].tolist()  # input order, whatever the workers
    assert (got["raw"] - ref["raw"]).abs().max() < 1e-6
    assert {"file_size", "file_mtime_ns"} <= set(got.columns)
    assert not (tmp_path / "p.csv.partial").exists()


@pytest.mark.parametrize("fault", ["rows:3:SIGKILL", "torn:4:SIGKILL"])
def test_killed_predict_resumes_without_losing_or_repeating_rows(job, tmp_path, fault):
    """Kill mid-run (after the 3rd batch is on disk, or half-way through writing the 4th), rerun the
    same command: the same rows as an uninterrupted run, none twice."""
    full, out = tmp_path / "full.csv", tmp_path / "p.csv"
    assert _vfa(_predict_args(job, full, "--tta", "2")).returncode == 0
    killed = _vfa(_predict_args(job, out, "--tta", "2"), fault=fault)
    assert killed.returncode == -9, killed.stderr[-2000:]
    part = tmp_path / "p.csv.partial"
    assert part.exists() and not out.exists()
    text = part.read_text()
    kept = text.count("\n") - 1  # complete rows: 3 batches of 4 on disk, plus the whole rows of a torn 4th
    assert kept == 12 if fault.startswith("rows") else (12 < kept < 16 and not text.endswith("\n"))
    again = _vfa(_predict_args(job, out, "--tta", "2"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{kept} done before, {30 - kept} now" in again.stdout
    a, b = pd.read_csv(full), pd.read_csv(out)
    assert b["file"].is_unique and b["file"].tolist() == a["file"].tolist()
    pd.testing.assert_frame_equal(a.drop(columns=["file_mtime_ns"]), b.drop(columns=["file_mtime_ns"]),
                                  check_exact=False, atol=1e-7)


def test_existing_output_needs_resume_or_force_and_resume_adds_only_new_or_changed(job, tmp_path):
    data = tmp_path / "imgs"
    shutil.copytree(job["data"], data)
    out = tmp_path / "p.csv"
    args = ["predict", "--model", str(job["ckpt"]), str(data), "--out", str(out), "--backend", "torch",
            "--device", "cpu"]
    assert main(args) == 0
    assert main(args) == 2  # exists: refused, one line
    write_folder(tmp_path / "more", n_per_class=2, seed=9)
    shutil.copy(tmp_path / "more" / "frac" / "frac_000.png", data / "frac" / "new.png")
    changed = data / "norm" / "norm_001.png"
    shutil.copy(tmp_path / "more" / "norm" / "norm_000.png", changed)  # same name, other content
    s = predict_to_file(job["ckpt"], [data], out, resume=True, backend="torch", device="cpu", workers=0)
    assert (s.before, s.now, s.changed) == (29, 2, 1)
    frame = pd.read_csv(out)
    assert len(frame) == 31 and frame["file"].is_unique
    fresh = predict_files(job["ckpt"], [changed], backend="torch", device="cpu", num_workers=0)["raw"].iloc[0]
    row = frame[frame["file"].str.endswith("norm/norm_001.png")]
    assert row["raw"].iloc[0] == pytest.approx(fresh, abs=1e-6)
    # other settings are not mixed into the same table
    assert main([*args, "--resume", "--tta", "2"]) == 2


def test_parquet_output(job, tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow is the optional parquet extra")
    out = tmp_path / "p.parquet"
    s = predict_to_file(job["ckpt"], [job["data"]], out, backend="torch", device="cpu", workers=0)
    frame = pd.read_parquet(out)
    assert s.now == len(frame) == 30 and frame["raw"].between(0, 1).all()


def test_bad_files_are_checked_up_front_in_workers(job, tmp_path):
    data = tmp_path / "imgs"
    shutil.copytree(job["data"], data)
    (data / "norm" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "p.csv"
    with pytest.raises(Exception, match="1 unusable file"):
        predict_to_file(job["ckpt"], [data], out, on_bad_file="error", backend="torch", device="cpu", workers=2)
    assert not out.exists()
    s = predict_to_file(job["ckpt"], [data], out, backend="torch", device="cpu", workers=2)
    assert s.now == 30 and len(s.skipped) == 1 and "broken.png" in s.skipped[0][0]
    assert pd.read_csv(tmp_path / "p_skipped.csv")["file"].str.endswith("broken.png").all()


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_two_process_predict_equals_single_process(job, tmp_path):
    """Lightning DDP on CPU (gloo), 2 processes, 30 files + 1 (odd: the sampler pads a duplicate)."""
    data = tmp_path / "imgs"
    shutil.copytree(job["data"], data)
    write_folder(tmp_path / "x", n_per_class=1, seed=5)
    shutil.copy(tmp_path / "x" / "frac" / "frac_000.png", data / "frac" / "odd.png")
    single, sharded = tmp_path / "single.csv", tmp_path / "sharded.csv"
    base = ["predict", "--model", str(job["ckpt"]), str(data), "--batch-size", "4", "--backend", "torch",
            "--device", "cpu", "--workers", "0", "--tta", "2"]
    assert _vfa([*base, "--out", str(single)]).returncode == 0
    r = _vfa([*base, "--out", str(sharded), "--set", "trainer.devices=2", "--set", "trainer.accelerator=cpu"],
             extra_env={"MASTER_PORT": str(free_port())})
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = pd.read_csv(single), pd.read_csv(sharded)
    assert len(a) == 31 and b["file"].is_unique
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6)
    assert not list(tmp_path.glob("sharded.csv.partial*"))


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_torchrun_two_processes(job, tmp_path):
    """The command a cluster user runs: torchrun --nproc_per_node 2 -m vfa.cli predict ... (gloo on CPU)."""
    single, sharded = tmp_path / "single.csv", tmp_path / "sharded.csv"
    assert _vfa(_predict_args(job, single)).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "vfa.cli", *_predict_args(job, sharded), "--set", "trainer.accelerator=cpu",
           "--set", "trainer.devices=2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(single), pd.read_csv(sharded), check_exact=False, atol=1e-6)


def test_a_batch_whose_every_file_fails_mid_run_is_skipped_not_a_crash(job, tmp_path, monkeypatch):
    """Files that pass the up-front check and then fail in the loader (replaced mid-run): when a
    whole batch fails, its files go to the skipped list and the other batches are written."""
    from vfa.data.stream import FileViews

    whole = tmp_path / "whole.csv"
    predict_to_file(job["ckpt"], [job["data"]], whole, batch_size=4, backend="torch", device="cpu", workers=0)
    bad, getitem = set(pd.read_csv(whole)["file"].map(lambda f: Path(f).name)[4:8]), FileViews.__getitem__  # batch 2

    def fail_some(self, i):
        if Path(self.paths[i]).name in bad:
            return None, self.positions[i], 0, 0, "cannot decode (injected)"
        return getitem(self, i)

    monkeypatch.setattr(FileViews, "__getitem__", fail_some)
    out = tmp_path / "p.csv"
    s = predict_to_file(job["ckpt"], [job["data"]], out, batch_size=4, backend="torch", device="cpu", workers=0)
    assert s.now == 26 and sorted(Path(p).name for p, _ in s.skipped) == sorted(bad)
    written = pd.read_csv(out)
    assert len(written) == 26 and not set(written["file"].map(lambda f: Path(f).name)) & bad
