"""Sharded `vfa predict` (issue 31, items 6 and 7): the per-rank shards and their merge, a kill and
resume across 2 ranks, decode failures from every rank in OUT_skipped.csv, a free port per run."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import make_checkpoint, write_folder
from vfa.config import ConfigError
from vfa.inference.output import merge_shards
from vfa.inference.sharded import shard_path, shards

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port free now, for this run's rendezvous: never a fixed one another run may hold."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(positions, files=None):
    files = files or {p: f"h{p:03d}" for p in positions}
    return pd.DataFrame({"position": positions, "image_id": [f"id{p}" for p in positions],
                         "file": [files[p] for p in positions], "raw": [p / 100 for p in positions],
                         "file_size": 1, "file_mtime_ns": 2})


def _write(path, frame, torn=""):
    path.write_text(frame.to_csv(index=False) + torn)


def test_merge_shards_drops_padding_and_torn_rows_in_input_order(tmp_path):
    part = tmp_path / "p.csv.partial"
    _write(shard_path(part, 0), _rows([0, 2, 4, 6]))
    _write(shard_path(part, 1), _rows([1, 3, 5, 0]), torn="7,id7,h0")  # 0: the sampler's padding; a torn row
    assert shards(part) == [shard_path(part, 0), shard_path(part, 1)]
    assert merge_shards(part, shards(part), {f"h{p:03d}": p for p in range(8)}) == 7
    got = pd.read_csv(part)
    assert got["file"].tolist() == [f"h{p:03d}" for p in range(7)] and "position" not in got
    assert not shards(part)


def test_merge_into_rows_already_there_keeps_input_order(tmp_path):
    """A resume's rows go between the earlier run's where their positions fall; a row of a file no
    longer among the inputs stays where it was; a row already there is not added twice."""
    part = tmp_path / "p.csv.partial"
    old = _rows([0, 1, 3, 7, 9]).drop(columns="position")
    old.loc[2, "file"] = "gone"
    _write(part, old)
    _write(shard_path(part, 0), _rows([2, 4, 8, 10]))
    _write(shard_path(part, 1), _rows([5, 6, 7, 11]))  # 7: already there
    positions = {f"h{p:03d}": p for p in range(12)}
    assert merge_shards(part, shards(part), positions) == 7
    got = pd.read_csv(part)
    assert got["file"].tolist() == ["h000", "h001", "gone", "h002", "h004", "h005", "h006", "h007", "h008",
                                    "h009", "h010", "h011"]
    assert got.loc[got["file"] == "h008", "raw"].item() == 0.08 and not shards(part)
    assert part.read_bytes().count(b"\r") == 0  # one line ending, as RowWriter writes


def test_merge_without_positions_appends_and_refuses_other_columns(tmp_path):
    part = tmp_path / "p.csv.partial"
    _write(part, _rows([3]).drop(columns="position"))
    _write(shard_path(part, 0), _rows([0, 1]))
    assert merge_shards(part, shards(part)) == 2
    assert pd.read_csv(part)["file"].tolist() == ["h003", "h000", "h001"]
    _write(shard_path(part, 0), _rows([5]).assign(extra=1))
    with pytest.raises(ConfigError, match="other columns"):
        merge_shards(part, shards(part), {"h005": 5})
    assert shards(part) and len(pd.read_csv(part)) == 3  # nothing lost: the shard stays for a fixed rerun


def _vfa(args, **env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port()), **env}
    cmd = [sys.executable, "-m", "tests.inference.shard_faults", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


@pytest.mark.xdist_group("ddp")
def test_two_ranks_killed_and_resumed_equal_one_uninterrupted_process(tmp_path):
    """31 files over 2 ranks (one unusable up front, two failing only in the loader, one on each
    rank); rank 0 killed -9 after its 1st batch, rank 1 after its 3rd, then the same command again:
    the rows of one uninterrupted process, in input order, and every rank's failures in OUT_skipped.csv."""
    ckpt, data = make_checkpoint(tmp_path / "m.ckpt"), write_folder(tmp_path / "imgs", n_per_class=15, seed=3)
    (data / "norm" / "norm_099.png").write_bytes(b"not an image")
    late = {"VFA_LATE_BAD": "norm_012,norm_013"}  # on the two ranks of the resumed run

    def args(out):
        return ["predict", "--model", str(ckpt), str(data), "--out", str(out), "--batch-size", "4", "--backend",
                "torch", "--device", "cpu", "--workers", "0"]
    two = ["--set", "trainer.devices=2", "--set", "trainer.accelerator=cpu"]
    single, out = tmp_path / "single.csv", tmp_path / "sharded.csv"
    r = _vfa(args(single), **late)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _vfa([*args(out), *two], VFA_SHARD_KILL="1,3", **late)
    assert r.returncode == -9, r.stderr[-3000:]
    part = tmp_path / "sharded.csv.partial"
    assert [len(pd.read_csv(s)) for s in shards(part)] == [4, 12] and not out.exists()
    r = _vfa([*args(out), *two], **late)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = pd.read_csv(single), pd.read_csv(out)
    assert len(a) == 28 and b["file"].is_unique
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6)  # the same rows, in input order
    skipped = pd.read_csv(tmp_path / "sharded_skipped.csv")
    assert sorted(skipped["file"].str.rsplit("/", n=1).str[-1]) == ["norm_012.png", "norm_013.png",
                                                                     "norm_099.png"]
    assert sorted(skipped["file"]) == sorted(pd.read_csv(tmp_path / "single_skipped.csv")["file"])
    assert not list(tmp_path.glob("sharded.csv.partial*"))
