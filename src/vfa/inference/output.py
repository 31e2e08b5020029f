"""`vfa predict`'s output, written as it goes, so a killed job loses at most one batch and resumes.

Rows are appended to OUT.partial (CSV) and flushed to disk after every batch; when the job ends
OUT.partial becomes OUT (renamed for .csv, converted for .parquet). Rerunning the command finds
OUT.partial and continues: a file is done when a row has its (hashed) path with the same size
and mtime; a file that changed since is predicted again and its old row dropped. `--resume` on
a finished OUT does the same (e.g. an archive folder that has grown). The job's settings are
kept in .OUT.vfa-job.json; a resume with other settings (models, TTA, seed, score, threshold) is
refused rather than mixed into one table.

`--force` and `--resume` act only on vfa's own predictions (`is_predictions`): an OUT with its job
record beside it, or whose columns start image_id,file,raw and carry the file fingerprint (a
table whose record was lost or copied without it). Any other file at OUT, or at OUT_skipped.csv
that is not vfa's file,reason list, is refused, with or without --force.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pandas as pd

from vfa.config import ConfigError

FINGERPRINT = ("file_size", "file_mtime_ns")
LEADING = ("image_id", "file", "raw")  # the first columns of every vfa predictions table
SKIPPED = ("file", "reason")  # the columns of OUT_skipped.csv (vfa.data.samples.write_skipped)


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def skipped_path(out: Path) -> Path:
    return out.with_name(out.stem + "_skipped.csv")


def job_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.vfa-job.json")


# job-record keys that describe how a run went, not settings its rows depend on: a resume may differ
RECORD_ONLY = ("backend", "backend_checks", "timings")


def record_backend(out: Path, job: dict, backend: str, checks: list[dict], timings: dict | None = None) -> None:
    """Add to OUT's job record the backend that ran and, per member, `auto`'s check (or fallback);
    at the end, the run's seconds per phase (`timings`)."""
    from vfa.runs import atomic_write

    record = {**job, "backend": backend, "backend_checks": checks, **({"timings": timings} if timings else {})}
    atomic_write(job_path(out), json.dumps(record, indent=1, sort_keys=True))


def check_format(out: Path) -> None:
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigError(f"--out must end in .csv or .parquet, got {out.name}")
    if out.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("a .parquet output needs pyarrow (pip install 'vfa[parquet]'); or write .csv") from None


def check_job(out: Path, job: dict, resume: bool) -> None:
    """Refuse to continue a partial or finished output made with other settings."""
    path = job_path(out)
    if not path.is_file():
        if resume and out.exists():
            raise ConfigError(f"{out}: no record of the job that wrote it ({path.name} is missing); "
                              f"use --force to replace it")
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = {}
    changed = sorted(k for k in set(before) | set(job) if k not in RECORD_ONLY and before.get(k) != job.get(k))
    if changed:
        raise ConfigError(f"{out} was written with other settings ({', '.join(changed)} differ); "
                          f"use --force to start again, or write to another --out")


def columns(path: Path) -> list[str]:
    """The column names of a CSV or parquet table; [] for anything unreadable as one."""
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        with open(path, newline="", encoding="utf-8") as f:
            return next(csv.reader(f), [])
    except Exception:  # noqa: BLE001  (a file that is not a table is, for this question, not vfa's)
        return []


def is_predictions(out: Path) -> bool:
    """Whether OUT is a predictions table vfa wrote: its job record is beside it, or its header is vfa's."""
    if job_path(out).is_file():
        return True
    cols = columns(out)
    return tuple(cols[:len(LEADING)]) == LEADING and set(FINGERPRINT) <= set(cols)


def refuse_foreign(out: Path) -> None:
    """Refuse an OUT (or OUT_skipped.csv) that vfa did not write: neither --force nor --resume applies."""
    keep = "vfa replaces (--force) or continues only its own outputs: choose another --out"
    if out.exists() and not is_predictions(out):
        raise FileExistsError(f"{out} exists and is not a vfa predictions file (no {job_path(out).name} beside it, "
                              f"no {','.join(LEADING)},... columns); {keep}")
    skipped = skipped_path(out)
    if skipped.exists() and tuple(columns(skipped)) != SKIPPED:
        raise FileExistsError(f"{skipped} exists and is not vfa's list of skipped files (columns "
                              f"{','.join(SKIPPED)}); {keep}")


def start(out: Path, job: dict, force: bool, resume: bool) -> tuple[Path, dict]:
    """Prepare OUT.partial; returns it and {hashed path: (size, mtime_ns)} of the rows already there."""
    from vfa.runs import atomic_write

    part = partial_path(out)
    refuse_foreign(out)
    if force:
        for p in (out, part, job_path(out), skipped_path(out)):
            p.unlink(missing_ok=True)
    elif out.exists() and not resume:  # --resume needs the job record (check_job): suggested only with one
        again = "add --resume to predict only the files not in it yet, or " if job_path(out).is_file() else "pass "
        raise FileExistsError(f"{out} exists; {again}--force to replace it")
    elif skipped_path(out).exists() and not (resume or part.exists()):
        raise FileExistsError(f"{skipped_path(out)} exists; pass --force to overwrite it")
    check_job(out, job, resume)
    if out.exists() and not part.exists():  # --resume of a finished output: continue from a copy
        frame = pd.read_parquet(out) if out.suffix.lower() == ".parquet" else pd.read_csv(out, dtype=str)
        frame.to_csv(part, index=False)
    atomic_write(job_path(out), json.dumps(job, indent=1, sort_keys=True))
    return part, done_rows(part)


def done_rows(part: Path, repair: bool = True) -> dict:
    """{hashed path: (size, mtime_ns)} of the rows in OUT.partial; `repair` first cuts a torn last row."""
    if not part.is_file() or part.stat().st_size == 0:
        return {}
    if repair:
        _drop_torn_tail(part)
    try:
        frame = pd.read_csv(part, usecols=["file", *FINGERPRINT], dtype={"file": str})
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ConfigError(f"{part}: cannot resume from it ({exc}); use --force to start again") from None
    return {f: (int(s), int(m)) for f, s, m in zip(frame["file"], frame[FINGERPRINT[0]], frame[FINGERPRINT[1]])}


def _drop_torn_tail(part: Path) -> None:
    """A kill during a write can leave half a row at the end: cut back to the last full line."""
    with open(part, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return
        chunk = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            data = f.read(pos - start)
            cut = data.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            pos = start
        f.truncate(0)


def drop_rows(part: Path, files: set[str]) -> None:
    """Remove the rows of `files` (changed since they were predicted), streaming, atomically."""
    tmp = part.with_name(part.name + ".tmp")
    with open(part, newline="", encoding="utf-8") as src, open(tmp, "w", newline="", encoding="utf-8") as dst:
        reader, writer = csv.reader(src), csv.writer(dst)
        header = next(reader)
        writer.writerow(header)
        col = header.index("file")
        writer.writerows(r for r in reader if r[col] not in files)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, part)


class RowWriter:
    """Appends DataFrames to a CSV, header once, each batch flushed and fsynced before the next."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] | None = None
        if path.is_file() and path.stat().st_size:
            with open(path, newline="", encoding="utf-8") as f:
                self.columns = next(csv.reader(f))
        self.f = open(path, "a", newline="", encoding="utf-8")

    def write(self, frame: pd.DataFrame) -> None:
        try:
            self._write(frame)
        except OSError as exc:  # a full disk or quota: one line naming the file; rerunning resumes
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from None

    def _write(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        if self.columns is None:
            self.columns = list(frame.columns)
            frame.to_csv(self.f, index=False)
        else:
            missing = [c for c in self.columns if c not in frame.columns]
            if missing or len(frame.columns) != len(self.columns):
                raise ConfigError(f"{self.path}: the rows of this run have other columns than those already "
                                  f"written ({', '.join(missing) or 'extra columns'}); use --force")
            frame[self.columns].to_csv(self.f, index=False, header=False)
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        try:
            self.f.close()
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from None


def finish(part: Path, out: Path) -> None:
    """OUT.partial -> OUT, atomically (a .parquet is converted through a temporary file)."""
    if not part.exists():
        part.write_text("", encoding="utf-8")
    if out.suffix.lower() == ".parquet":
        frame = pd.read_csv(part, dtype={"file": str, "image_id": str}) if part.stat().st_size else pd.DataFrame()
        tmp = out.with_name(f".{out.name}.tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, out)
        part.unlink()
    else:
        os.replace(part, out)


def merge_shards(part: Path, shards: list[Path], positions: dict[str, int] | None = None) -> int:
    """Fold per-rank shards (rows with their input `position`) into OUT.partial in input order,
    without the duplicates a distributed sampler pads with or rows already there; returns how
    many rows were added. With `positions` ({file column value: input position}), rows already in
    OUT.partial are kept in place and the new ones go between them where their positions fall (a
    resumed run's rows belong among those of the run it resumes, not after them); without, they
    are appended. The shards are removed once their rows are safely in OUT.partial."""
    frames = []
    for shard in shards:
        if shard.stat().st_size == 0:
            continue
        _drop_torn_tail(shard)
        frames.append(pd.read_csv(shard, dtype={"file": str, "image_id": str}))
    added = 0
    if frames:
        rows = pd.concat(frames, ignore_index=True).drop_duplicates("position").sort_values("position")
        done = set(done_rows(part))
        rows = rows[~rows["file"].isin(done)]
        if done and positions is not None:
            _merge_in_place(part, rows, positions)
        else:
            writer = RowWriter(part)
            try:
                writer.write(rows.drop(columns="position"))
            finally:
                writer.close()
        added = len(rows)
    for shard in shards:
        shard.unlink()
    return added


def _merge_in_place(part: Path, rows: pd.DataFrame, positions: dict[str, int]) -> None:
    """Rewrite OUT.partial (streaming: memory is O(new rows)) with `rows` (sorted by position) each
    written before the first old row of a later position; old rows keep their order, and an old row
    of a file no longer among the inputs stays where it is. Atomic: a kill leaves the old file."""
    import io

    tmp = part.with_name(part.name + ".tmp")
    with open(part, newline="", encoding="utf-8") as src, open(tmp, "w", newline="", encoding="utf-8") as dst:
        reader = csv.reader(src)
        header = next(reader)
        missing = [c for c in header if c not in rows.columns]
        if missing or len(rows.columns) != len(header) + 1:
            raise ConfigError(f"{part}: the rows of this run have other columns than those already written "
                              f"({', '.join(missing) or 'extra columns'}); use --force")
        # the new rows as RowWriter would have written them (pandas' number formatting), then as fields
        new = list(csv.reader(io.StringIO(rows[header].to_csv(index=False, header=False))))
        new_pos, i = rows["position"].tolist(), 0
        writer = csv.writer(dst, lineterminator="\n")  # pandas' line ending, as RowWriter writes
        writer.writerow(header)
        col = header.index("file")
        for old in reader:
            at = positions.get(old[col])
            while at is not None and i < len(new) and new_pos[i] < at:
                writer.writerow(new[i])
                i += 1
            writer.writerow(old)
        writer.writerows(new[i:])
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, part)
