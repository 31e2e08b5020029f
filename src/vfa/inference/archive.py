"""`vfa predict` at archive scale: streamed to disk, resumable, and sharded over processes.

One process: `predict_to_file` checks the files still to do in DataLoader workers, then appends
each batch's rows to OUT.partial (`vfa.inference.output`), so a kill loses at most one batch and
rerunning the command continues where it stopped. Several processes (`--set trainer.devices=N`,
`num_nodes`, or a launch by torchrun / SLURM): Lightning's `Trainer.predict` runs the same loop
per rank with a prediction writer (`vfa.inference.sharded`), and rank 0 merges the shards.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from vfa import config as config_mod
from vfa.data.samples import DataError, Samples, write_skipped
from vfa.inference import output
from vfa.inference.predict import check_decodable, prepare_job, model_threshold, output_rows
from vfa.inference.tta import tta_name
from vfa.io.identifiers import public_path


@dataclass
class Summary:
    out: Path
    before: int = 0            # rows already in the output when this run started
    now: int = 0               # rows this run added
    skipped: list = field(default_factory=list)   # [(path, reason)] unusable files
    changed: int = 0           # files predicted again because they changed since
    backend: str = ""
    seconds: float = 0.0
    skipped_csv: Path | None = None
    timings: dict = field(default_factory=dict)   # seconds per phase of this run (Phases)

    def line(self) -> str:
        done = f"{self.before + self.now} predictions in {self.out} ({self.before} done before, {self.now} now"
        if self.changed:
            done += f", {self.changed} of them again because the file changed"
        done += f"; backend {self.backend}, {self.seconds:.1f} s)"
        if self.skipped:
            done += f"; skipped {len(self.skipped)} unusable file(s), listed in {self.skipped_csv}"
        return done


class Phases:
    """Wall seconds per phase of a predict run, for the job record (`timings`) and `make bench`'s
    start-up breakdown: each `mark(name)` closes the phase that began at the previous mark."""

    def __init__(self):
        self.t, self.seconds = time.perf_counter(), {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self.t, 4)
        self.t = now


def job_record(ens, tta: int, tta_preset: str, seed: int, score: str, threshold, id_regex, id_column,
               keep_identifiers: bool) -> dict:
    """What must be equal for rows of two runs to belong in one table (the backend may differ)."""
    import os

    members = [f"{n}:{os.path.getsize(p)}:{os.stat(p).st_mtime_ns}" for n, p in zip(ens.names, ens.paths)] \
        if ens.paths else ens.names
    return {"members": members, "combine": ens.combine, "tta": tta,
            "tta_preset": tta_name(tta_preset, ens.members) if tta else None,
            "seed": seed if tta else None, "score": score, "threshold": str(threshold), "id_regex": id_regex,
            "id_column": id_column, "keep_identifiers": keep_identifiers}


def files_to_do(paths: list[str], done: dict, keep_identifiers: bool):
    """(positions to predict, hashed paths whose rows are stale, how many are done)."""
    from vfa.data.stream import fingerprint
    from vfa.inference.engine import public_files

    if not done:
        return list(range(len(paths))), set(), 0
    todo, stale, before = [], set(), 0
    for i, key in enumerate(public_files(paths, keep_identifiers)):
        if key in done:
            try:
                same = fingerprint(paths[i]) == done[key]
            except OSError:
                same = False
            if same:
                before += 1
                continue
            stale.add(key)
        todo.append(i)
    return todo, stale, before


def predict_to_file(model, inputs, out: str | Path, force: bool = False, resume: bool = False, tta: int = 0,
                    tta_preset: str = "auto", seed: int = 0, id_regex: str | None = None, score: str = "raw",
                    batch_size: int = 16, workers: int | None = None, on_bad_file: str = "skip",
                    progress: bool = False, log=None, id_column: str | None = None, keep_identifiers: bool = False,
                    backend: str = "auto", device: str = "auto", threshold: float | str = "model") -> Summary:
    """`vfa predict`: stream the predictions of `model` (checkpoint(s) or an ensemble file) to `out`
    (.csv or .parquet), resuming a partial or (with `resume`) finished output. See the module doc."""
    from vfa.data.stream import default_workers
    from vfa.inference.engine import Scorer
    from vfa.runs import lock

    log = log or (lambda m: None)
    t0, phases = time.perf_counter(), Phases()
    out = out_path(out, model, inputs)
    ens, paths, id_map = prepare_job(model, inputs, tta, score, batch_size, workers, device, id_column, on_bad_file,
                                     backend)
    thr = model_threshold(ens, threshold)
    job = job_record(ens, tta, tta_preset, seed, score, threshold, id_regex, id_column, keep_identifiers)
    summary = Summary(out)
    phases.mark("load model")
    with lock(out):
        part, done = output.start(out, job, force, resume)
        todo, stale, summary.before = files_to_do(paths, done, keep_identifiers)
        if summary.before:
            log(f"resuming {out}: {summary.before} of {len(paths)} files already predicted")
        if stale:
            output.drop_rows(part, stale)
            summary.changed = len(stale)
        workers = default_workers(len(todo), batch_size) if workers is None else workers
        good, positions, summary.skipped = check_decodable(ens, [paths[i] for i in todo], todo, on_bad_file, workers,
                                                  progress, log)
        if not good and not summary.before:
            raise DataError(f"no images to predict: {len(paths)} file(s) found in the inputs"
                            + (f", all {len(summary.skipped)} unusable" if summary.skipped else ""))
        phases.mark("check files")
        scorer = Scorer(ens, backend, len(good), good, tta, tta_preset, seed, log=log)
        phases.mark("engine set-up")
        score_to(part, scorer, summary, (good, positions, batch_size, workers, progress), phases,
                 lambda rows: output_rows(rows, scorer.kinds(), thr, score, id_map, id_regex, keep_identifiers),
                 lambda: output.record_backend(out, job, scorer.backend, scorer.checks))
        finish(summary, part, keep_identifiers, log)
        phases.mark("write")
        summary.timings = phases.seconds
        output.record_backend(out, job, scorer.backend, scorer.checks, summary.timings)
    summary.seconds = time.perf_counter() - t0
    return summary


def score_to(part: Path, scorer, summary: Summary, job, phases: Phases, to_rows, on_first) -> None:
    """Score `job` (paths, positions, batch size, workers, progress) and append each batch's rows to
    `part`; the first batch (decode, and auto's check) and the rest are timed apart."""
    from vfa.inference.engine import iter_rows

    writer = output.RowWriter(part)
    try:
        for rows, late in iter_rows(scorer, *job):
            summary.skipped += [(p, r) for _, p, r in late]
            if not len(rows):  # every file of the batch failed to decode mid-run: only skips
                continue
            writer.write(to_rows(rows))
            if not summary.now:  # the first batch decided auto's backend: into the job record
                on_first()
                phases.mark("first batch")
            summary.now += len(rows)
    finally:
        writer.close()
    phases.mark("other batches")
    summary.backend = scorer.backend


def out_path(out, model, inputs) -> Path:
    """--out checked before anything is read: never an input (model or data), .csv or .parquet."""
    from vfa.inference.ensemble import Ensemble, model_paths
    from vfa.runs import check_out

    models = [] if isinstance(model, Ensemble) else [m for m in model_paths(model) if isinstance(m, str | Path)]
    out = check_out(out, [*models, *([inputs] if isinstance(inputs, str | Path) else inputs)], "file")
    output.check_format(out)
    return out


def finish(summary: Summary, part: Path, keep_identifiers: bool, log) -> None:
    """OUT.partial -> OUT, and this run's unusable files logged and listed in OUT_skipped.csv."""
    out = summary.out
    output.finish(part, out)
    for path, reason in summary.skipped:
        log(f"skipped {path if keep_identifiers else public_path(path)}: {reason}")
    skipped_csv = output.skipped_path(out)
    skipped_csv.unlink(missing_ok=True)
    write_skipped(Samples([], [], "", skipped=summary.skipped), skipped_csv, keep_identifiers)
    summary.skipped_csv = skipped_csv if summary.skipped else None


def wants_shards(devices, num_nodes) -> bool:
    """More than one process: --set trainer.devices/num_nodes, or a launcher's WORLD_SIZE."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return True
    try:
        n = int(devices) if str(devices) not in ("auto", "-1") else 1
    except (TypeError, ValueError):
        n = len(devices) if isinstance(devices, list | tuple) else 1
    if int(num_nodes or 1) < 1:
        raise config_mod.ConfigError(f"trainer.num_nodes must be >= 1, got {num_nodes}")
    return n > 1 or int(num_nodes or 1) > 1
