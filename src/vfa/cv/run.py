"""`vfa cv`: K-fold cross-validation of a preset on a manifest, fold by fold, resumable.

Fold k validates, the other folds train, the manifest's `test` rows stay out of every fold. Each
fold is an ordinary run directory (OUT/fold0, ...), trained by `vfa.api.train` exactly as `vfa
train --set data.fold=k` would. `data.fold=k` runs that fold alone (a cluster array job runs the
folds in parallel); `resume` continues unfinished folds and starts missing ones; once every fold
is finished, `vfa.cv.summary` writes the pooled out-of-fold results and evaluates the fold
ensemble once on the held-out test rows.
"""
from __future__ import annotations

import copy
from pathlib import Path

from vfa import api
from vfa import config as config_mod
from vfa.data.samples import is_manifest, load_samples
from vfa.cv.summary import fold_dir, summarize
from vfa.data.split import folds_of
from vfa.errors import ConfigError
from vfa.registry import FAMILIES
from vfa.runs import atomic_write, check_out, lock, mark, marked, remove_outputs
from vfa.training.checkpointing import completed_epochs_in

CONFIG = "cv_config.yaml"  # the base config every fold shares (data.fold unset)
CHECKPOINTS = ("last", "best")


def fold_state(run: Path, epochs: int) -> str:
    """'done' (all epochs trained), 'partial' (a last.ckpt with fewer) or 'missing'."""
    done = completed_epochs_in(run)
    if done >= epochs:
        return "done"
    return "partial" if done or (run / "checkpoints" / "last.ckpt").is_file() else "missing"


def _base(cfg) -> dict:
    base = config_mod.to_dict(cfg)
    base["data"]["fold"] = None
    return base


def _prepare(out: Path, cfg, force: bool, resume: bool, one_fold: bool = False) -> None:
    """The top folder: new (or replaced with `force`), or, resuming, the same base config as before.
    A single fold's job (`one_fold`, one of an array started together) only checks the config."""
    saved = out / CONFIG
    if one_fold and not saved.is_file():
        out.mkdir(parents=True, exist_ok=True)  # its siblings may be writing the same two files: same bytes
        atomic_write(saved, config_mod.yaml.safe_dump(_base(cfg), sort_keys=False))
        mark(out, "cv")
        return
    if saved.is_file() and (resume or not force):
        before = config_mod.yaml.safe_load(saved.read_text())
        diff = config_mod.differences(before, _base(cfg))
        if diff and not force:
            listing = "; ".join(f"{k}: {a!r} before, {b!r} now" for k, a, b in diff[:8])
            raise ConfigError(f"{out} holds a cross-validation with other settings ({listing}); give the same "
                              f"preset, data and --set, or a new --out")
        if not resume:
            raise FileExistsError(f"{out} holds a cross-validation; pass --resume to continue it or --force to "
                                  "start it again")
        return
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} already exists and is not empty; pass --force to replace vfa's outputs in it")
        if marked(out) != "cv":
            raise FileExistsError(f"{out} holds no vfa cross-validation; --force only replaces vfa's own outputs")
        remove_outputs(out, "cv")
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "cv")
    atomic_write(saved, config_mod.yaml.safe_dump(_base(cfg), sort_keys=False))


def _train_fold(cfg, out: Path, k: int, resume: bool, force: bool, log) -> Path:
    run = fold_dir(out, k)
    state = fold_state(run, cfg.optim.epochs)
    if state == "done" and not force:
        log(f"fold {k}: finished ({run}), kept")
        return run
    if state == "partial" and not force:
        if not resume:
            raise FileExistsError(f"{run} holds an unfinished fold; pass --resume to continue it")
        log(f"fold {k}: continuing {run}")
        return api.resume(run, log=log)
    fold_cfg = copy.deepcopy(cfg)
    fold_cfg.data.fold = k
    log(f"fold {k} of {cfg.data.folds}: training {run}")
    # a fold killed before its first epoch left a run folder with nothing to keep
    return api.train(fold_cfg, run, force=force or marked(run) == "train", log=log)


def cross_validate(cfg, out: str | Path, resume: bool = False, force: bool = False, checkpoint: str = "last",
                   progress: bool = True, log=print) -> dict | None:
    """Train the folds of `cfg` (all, or `cfg.data.fold` alone) into `out`; when all are finished,
    write the summary (`vfa.cv.summary.summarize`) and return it (None after a single fold)."""
    out, d = Path(out), cfg.data
    FAMILIES.of(cfg).refuse("cv")
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"--checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    if d.train is None or not is_manifest(d.train):
        raise ConfigError(f"vfa cv needs a manifest CSV (--data), got {d.train}; folds are patients' rows")
    if d.val is not None:
        raise ConfigError("vfa cv validates on each fold in turn; do not set data.val")
    check_out(out, [d.train, cfg.model.init_from], "folder")
    rows = load_samples(d.train, d.classes, split="all")
    folds_of(rows, d.folds, d.fold_seed)  # a bad fold column or too few patients fail now, not after a fold
    only = d.fold
    base = copy.deepcopy(cfg)
    base.data.fold = None
    _prepare(out, base, force and only is None, resume or only is not None, one_fold=only is not None)
    for k in ([only] if only is not None else range(d.folds)):
        _train_fold(base, out, k, resume or only is not None, force, log)
    if only is not None:
        left = [k for k in range(d.folds) if fold_state(fold_dir(out, k), cfg.optim.epochs) != "done"]
        log(f"fold {only} finished; " + (f"folds {left} are not yet" if left else
                                         f"all folds are: vfa cv --resume --out {out} ... writes the summary"))
        return None
    with lock(out):
        return summarize(base, out, rows, checkpoint=checkpoint, progress=progress, log=log)
