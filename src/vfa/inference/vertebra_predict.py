"""`vfa predict` with a per-vertebra model (the family's predict step, vfa.registry.FAMILIES):
the image-level table every family writes (image_id, file, raw, predicted, then max_grade and
n_vertebrae) and vertebrae.csv beside it (one row per body), both streamed and resumable by the
image family's mechanism (vfa.inference.output): each batch's bodies, then its image rows, are
appended to VERTEBRAE.partial and OUT.partial and fsynced; an image is done once its row is in
OUT.partial, so a rerun after a kill drops the bodies of images without one and reads them again.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from vfa.config import ConfigError
from vfa.inference import output
from vfa.inference.archive import Summary, files_to_do, finish, job_record, out_path, wants_shards
from vfa.inference.engine import public_files
from vfa.inference.predict import check_decodable, image_ids, model_threshold, prepare_job
from vfa.inference.vertebra import image_rows, read_spines, spine_rows

VERTEBRAE = "vertebrae.csv"
BODY_COLUMNS = ("file", "level", "x0", "y0", "x1", "y1")   # how a vertebrae.csv vfa wrote begins


def reading_threshold(model, threshold) -> float:
    """A per-vertebra model's one threshold: the fracture head's P at which a body is called (so
    the image's `predicted` is "a body is fractured"): --threshold N, or "model" for the
    checkpoint's (its vertebra.fracture_threshold). Set on the loaded model for this job."""
    value = model_threshold(model, threshold)
    if value <= 0:
        raise ConfigError("--threshold must be above 0 for a per-vertebra model (at 0 every body is fractured)")
    model.config.vertebra.fracture_threshold = model.threshold = value
    return value


def image_table(paths: list[str], spines: list[pd.DataFrame], threshold: float, id_map: dict, id_regex,
                keep_identifiers: bool) -> pd.DataFrame:
    """IMAGE_COLUMNS + the family's extras for `paths` (the files as read) from their bodies."""
    ids = [id_map.get(p, Path(p).as_posix()) for p in paths] if id_map else \
        image_ids(paths, None, id_regex, keep_identifiers)
    return pd.concat([pd.DataFrame({"image_id": ids, "file": public_files(paths, keep_identifiers)}),
                      image_rows(spines, threshold)], axis=1)


def _start_bodies(beside: Path, out: Path, force: bool, resume: bool) -> Path:
    """VERTEBRAE.partial, continuing a finished table when OUT is resumed; refuses a table that
    belongs to no resumable job unless `force`."""
    part = output.partial_path(beside)
    if beside.is_file() and not _is_body_table(beside):
        raise FileExistsError(f"{beside} exists and is not a vfa vertebrae table (its columns do not start "
                              f"{','.join(BODY_COLUMNS)}); vfa replaces only its own outputs: choose another --out "
                              f"folder")
    if force:
        beside.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
    elif beside.exists() and not resume:
        raise FileExistsError(f"{beside} exists; add --resume to continue, or --force to replace it")
    if beside.exists() and not part.exists():
        part.write_bytes(beside.read_bytes())
    return part


def _is_body_table(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline().strip().split(",")[:len(BODY_COLUMNS)] == list(BODY_COLUMNS)


def _keep_bodies_of(part: Path, done: set[str]) -> None:
    """Drop the body rows of images not (or no longer) in OUT.partial: a kill between the two
    appends, or a file that changed since it was read."""
    if not part.is_file() or not part.stat().st_size:
        return
    # as text, so the kept rows are rewritten as they were (an empty grade stays empty, not 1.0)
    frame = pd.read_csv(part, dtype=str, keep_default_na=False)
    keep = frame["file"].isin(done)
    if not keep.all():
        from vfa.runs import atomic_write

        atomic_write(part, frame[keep].to_csv(index=False))


def predict_vertebra_files(model, inputs, out, sets=(), force: bool = False, resume: bool = False, threshold="model",
                           batch_size: int = 8, workers: int | None = None, on_bad_file: str = "skip",
                           progress: bool = False, log=None, id_column: str | None = None, id_regex: str | None = None,
                           keep_identifiers: bool = False, device: str = "auto", **defaults) -> Summary:
    """Read every image's spine and write OUT (.csv or .parquet) and vertebrae.csv beside it.
    `sets` and `defaults` (the image family's tta, score, backend, ...): vfa predict refuses them,
    when set, before this is called (Family.refuse); here they are at their defaults."""
    from vfa.runs import atomic_write, lock

    if wants_shards(1, 1):
        raise ConfigError("a per-vertebra model reads in one process: start vfa predict without a launcher's "
                          "several tasks (WORLD_SIZE > 1)")
    log = log or (lambda m: None)
    t0 = time.perf_counter()
    out = out_path(out, model, inputs)
    ens, paths, id_map = prepare_job(model, inputs, 0, "raw", batch_size, workers, device, id_column, on_bad_file)
    thr = reading_threshold(ens.single, threshold)
    job = job_record(ens, 0, "auto", 0, "raw", thr, id_regex, id_column, keep_identifiers)
    summary, beside = Summary(out, backend="torch"), out.with_name(VERTEBRAE)
    with lock(out):
        vpart = _start_bodies(beside, out, force, resume)
        part, done = output.start(out, job, force, resume)
        todo, stale, summary.before = files_to_do(paths, done, keep_identifiers)
        if stale:
            output.drop_rows(part, stale)
            summary.changed = len(stale)
        _keep_bodies_of(vpart, set(done) - stale)
        good, _, summary.skipped = check_decodable(ens, [paths[i] for i in todo], todo, on_bad_file,
                                                   workers or 0, progress, log)
        if not good and not summary.before:
            raise ConfigError(f"no images to predict: {len(paths)} file(s) found in the inputs"
                              + (f", all {len(summary.skipped)} unusable" if summary.skipped else ""))
        bodies = _read_all(ens.single, good, thr, batch_size, progress, (part, vpart), summary,
                           dict(id_map=id_map, id_regex=id_regex, keep_identifiers=keep_identifiers))
        if not vpart.is_file() or not vpart.stat().st_size:  # no body found at all: the header still
            atomic_write(vpart, spine_rows("", np.zeros((0, 6, 2)), np.zeros(0, int), np.zeros(0)).to_csv(index=False))
        output.finish(vpart, beside)
        finish(summary, part, keep_identifiers, log)
    summary.seconds = time.perf_counter() - t0
    log(f"{summary.now} images read now ({bodies} vertebrae), {summary.before} before; bodies -> {beside}")
    return summary


def _read_all(model, paths: list[str], thr: float, batch_size: int, progress: bool, parts, summary, ids) -> int:
    """Read `paths` batch by batch, appending bodies then image rows (each fsynced); returns how
    many bodies were written."""
    from vfa.data.stream import fingerprint

    part, vpart = parts
    writer, vwriter = output.RowWriter(part), output.RowWriter(vpart)
    starts, bodies = range(0, len(paths), batch_size), 0
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="vertebrae", unit="batch")
    try:
        for s in starts:
            chunk = paths[s:s + batch_size]
            spines = read_spines(model, chunk, batch_size)
            rows = image_table(chunk, spines, thr, **ids)
            size_mtime = [fingerprint(p) for p in chunk]
            rows["file_size"], rows["file_mtime_ns"] = [a for a, _ in size_mtime], [b for _, b in size_mtime]
            files = rows["file"].tolist()
            vert = pd.concat([v.assign(file=f) for v, f in zip(spines, files)], ignore_index=True)
            vwriter.write(vert.round(3))
            writer.write(rows)
            summary.now, bodies = summary.now + len(chunk), bodies + len(vert)
    finally:
        vwriter.close()
        writer.close()
    return bodies
