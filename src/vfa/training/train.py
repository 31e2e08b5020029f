"""Training on Lightning: data checks, the trainer and its checkpoints, precision and devices.

`train(cfg, out)` trains one model (`vfa.train`, in `vfa.api`, adds the held-out test evaluation).
Accelerator, devices, num_nodes, strategy and precision pass straight through to Lightning's
Trainer, so DDP needs no extra code.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar

from vfa import checkpoint
from vfa import config as config_mod
from vfa import runs
from vfa.data.dataset import class_weight
from vfa.data.samples import validate, write_skipped
from vfa.errors import RunInterrupted
from vfa.training.checkpointing import AtomicCheckpointIO, checkpoint_callbacks, completed_epochs_in, resume_point
from vfa.training.datamodule import VFADataModule
from vfa.training.module import VFAModule, keep_history_before
from vfa.training.tracking import make_loggers, remember

def load_data(cfg, train: bool = True, log=print):
    """Scan and fully decode the training/validation (and --test) sets before any work starts;
    refuse bad files (per data.on_bad_file), an image or a patient in two splits, a validation
    set with a single class. Each data argument is a class folder or a manifest CSV."""
    from vfa.data.samples import (DataError, check_leakage, duplicates_within, is_manifest, leakage_error, load_samples, manifest_splits, split_source)
    from vfa.io.normalize import parse

    d = cfg.data
    parse(d.normalize)
    if d.train is None:
        raise config_mod.ConfigError("data.train is not set (pass --train DIR or MANIFEST.csv)")
    if d.fold is not None:
        train_samples, val_samples = _fold(cfg)
    else:
        train_samples = load_samples(d.train, d.classes, split="train")  # a missing path fails first
        val = d.val
        if val is None and is_manifest(d.train) and "val" in manifest_splits(d.train):
            val = str(split_source(d.train)[0])  # a split manifest: its 'val' rows
        if val is None:
            raise config_mod.ConfigError("data.val is not set (pass --val DIR or MANIFEST.csv)")
        val_samples = load_samples(val, d.classes, split="val")
    tr = validate(train_samples, d.on_bad_file, need_classes=(0, 1), frame=d.frame, min_side=d.min_side)
    va = validate(val_samples, d.on_bad_file, frame=d.frame, min_side=d.min_side)
    sets = {"train": tr, "val": va}
    if getattr(d, "test", None):
        sets["test"] = validate(load_samples(d.test, d.classes, split="test"), d.on_bad_file, frame=d.frame,
                                 min_side=d.min_side)
    leaks = check_leakage(sets)
    if leaks:
        raise leakage_error(leaks)
    for name, s in sets.items():
        log(f"{name}: {len(s.paths)} images {s.counts()} from {s.source or s.root}"
            + (f"; skipped {len(s.skipped)} file(s)" if s.skipped else ""))
        dups = duplicates_within(s)
        if dups:
            log(f"warning: {name} holds {len(dups)} group(s) of identical images, e.g. {', '.join(dups[0][:3])}")
    if len(set(va.labels)) < 2:
        names = ", ".join(f"{n} {va.classes[c]}" for c, n in va.counts().items()) or "no images"
        raise DataError(f"the validation set {va.source or va.root} has a single class ({names}): AUC, Sn and "
                        f"Sp are undefined there and best.ckpt could not be chosen; add images of both classes")
    return tr, va

def _fold(cfg):
    """data.fold = k: (train, val) samples of fold k of the data.train manifest."""
    from vfa.data.samples import is_manifest, load_samples
    from vfa.data.split import fold_samples

    d = cfg.data
    if not is_manifest(d.train):
        raise config_mod.ConfigError(f"data.fold needs a manifest CSV as data.train (folds are rows); got {d.train}")
    if d.val is not None:
        raise config_mod.ConfigError("data.fold validates on that fold of data.train; do not also set data.val")
    return fold_samples(load_samples(d.train, d.classes, split="all"), d.fold, d.folds, d.fold_seed)


def make_trainer(cfg, run_dir: Path, extra_callbacks=(), monitor=("val_auc", "max")) -> L.Trainer:
    t = cfg.trainer
    callbacks = [*checkpoint_callbacks(run_dir / "checkpoints", monitor), *extra_callbacks]
    if t.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=5))
    loggers = make_loggers(cfg, run_dir)
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    return L.Trainer(
        default_root_dir=str(run_dir), max_epochs=cfg.optim.epochs, accelerator=t.accelerator,
        devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision,
        deterministic=determinism(cfg), callbacks=callbacks, logger=loggers or False, num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps, enable_progress_bar=t.progress,
        limit_train_batches=t.limit_train_batches, enable_model_summary=False, plugins=[AtomicCheckpointIO()])


ARCHITECTURE_KEYS = ("backbone", "head", "head_batchnorm", "global_pool", "backbone_kwargs")


def load_init(cfg, log=print) -> dict:
    """The model weights of `cfg.model.init_from` (a vfa checkpoint, e.g. from `vfa import-keras`),
    read with `torch.load(weights_only=True)`. The architecture keys of `cfg.model` are set to the
    checkpoint's (the weights decide them); a preprocessing different from the checkpoint's is noted."""
    from vfa.data.augment import get_augment_config

    ckpt = checkpoint.load(cfg.model.init_from, role="--init checkpoint")
    src = checkpoint.config_of(ckpt, cfg.model.init_from)
    changed = [k for k in ARCHITECTURE_KEYS if getattr(cfg.model, k) != getattr(src.model, k)]
    for key in ARCHITECTURE_KEYS:
        setattr(cfg.model, key, getattr(src.model, key))
    cfg.model.pretrained = False
    if changed:
        log("model from the --init checkpoint: " + ", ".join(f"{k}={getattr(src.model, k)!r}" for k in changed))
    resize = [get_augment_config(c.augment, **c.augment_overrides).resize for c in (src, cfg)]
    if tuple(src.data.size) != tuple(cfg.data.size) or resize[0] != resize[1] or src.data.normalize != cfg.data.normalize:
        log(f"note: the --init model expects {src.data.size[0]}x{src.data.size[1]}, {resize[0]} resize, normalize "
            f"{src.data.normalize}; this run feeds {cfg.data.size[0]}x{cfg.data.size[1]}, {resize[1]} resize, "
            f"normalize {cfg.data.normalize}")
    return checkpoint.weights_of(ckpt)


def _training_device(cfg) -> str:
    acc = str(cfg.trainer.accelerator).lower()
    if acc == "auto":
        return "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    return {"gpu": "cuda"}.get(acc, acc)


def native_bf16(device: str) -> bool:
    """bf16 without emulation: a CUDA GPU that supports it, or an x86 CPU with avx512_bf16 / AMX."""
    if device == "cuda":
        # including_emulation=False: pre-Ampere GPUs can hold bf16 tensors but compute them slowly
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def determinism(cfg):
    """trainer.deterministic on a GPU -> "warn": CUDA has no deterministic kernel for some backward
    passes (adaptive max-pool, the cpu-demo's global pool, is one), and a run must not stop there;
    every other operation stays deterministic. On CPU every kernel is, and True holds."""
    d = cfg.trainer.deterministic
    if d is True and _training_device(cfg) == "cuda":
        return "warn"
    return d


def resolve_precision(cfg) -> str:
    """trainer.precision "auto" -> bf16-mixed on a device with native bf16, else 32-true."""
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    return "bf16-mixed" if native_bf16(_training_device(cfg)) else "32-true"


def resolve_augment_on(cfg) -> str:
    """"auto" -> "device" when training runs on a GPU (workers would starve it), else "workers"."""
    if cfg.data.augment_on != "auto":
        return cfg.data.augment_on
    return "device" if _training_device(cfg) in ("cuda", "mps") else "workers"


def train(cfg, out: str | Path, force: bool = False, resume: bool = False, log=print) -> Path:
    """Train as configured; returns the run directory. `resume=True` continues `out` from last.ckpt;
    `cfg.model.init_from` (`vfa train --init CKPT`) starts from that checkpoint's weights."""
    run_dir = Path(out)
    init_state = load_init(cfg, log) if cfg.model.init_from and not resume else None
    if resume:
        last, done = resume_point(run_dir, log)
        if cfg.optim.epochs <= done:
            raise config_mod.ConfigError(f"{run_dir} has already trained {done} epoch(s); to extend it, pass "
                                         f"--epochs above {done}")
    else:  # before any data is read: an --out that would overwrite an input fails at once
        runs.check_out(run_dir, [cfg.data.train, cfg.data.val, cfg.data.test, cfg.model.init_from], "folder")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cfg.data.augment_on = resolve_augment_on(cfg)
    cfg.trainer.precision = resolve_precision(cfg)
    tr, va = load_data(cfg, log=log)  # every file decoded and checked before the disk is touched
    if not resume:
        runs.prepare_run_dir(run_dir, force, [cfg.data.train, cfg.data.val, cfg.data.test, cfg.model.init_from],
                             ddp=True)
        runs.write_run_files(run_dir, cfg)
    elif not runs.is_secondary_rank():  # what --epochs / --set changed, so the next --resume knows it
        runs.atomic_write(run_dir / "config.yaml", config_mod.dump(cfg))
    if not runs.is_secondary_rank():
        write_skipped(tr, run_dir / "skipped_train.csv")
        write_skipped(va, run_dir / "skipped_val.csv")
    pos_weight = class_weight(tr.labels) if cfg.optim.class_weights else 1.0
    log(f"positive-class weight: {pos_weight:.3f}")
    module = VFAModule(config_mod.to_dict(cfg), pos_weight)
    if init_state is not None:
        module.model.load_state_dict(init_state)
        log(f"initial weights: {cfg.model.init_from}")
    if resume and not runs.is_secondary_rank():
        runs.remove_temporaries(run_dir, "checkpoints")  # what a killed write left behind
        dropped = keep_history_before(run_dir / "history.csv", done)
        log(f"resuming {run_dir} after epoch {done} ({last.name})"
            + (f"; {dropped} history row(s) of the unfinished epoch dropped" if dropped else ""))
    trainer = make_trainer(cfg, run_dir)
    try:
        trainer.fit(module, datamodule=VFADataModule(cfg, tr, va, done if resume else 0),
                    ckpt_path=str(last) if resume else None,
                    weights_only=True if resume else None)
    except RunInterrupted as exc:
        done = completed_epochs_in(run_dir)
        exc.hint = (f"{run_dir / 'checkpoints' / 'last.ckpt'} holds {done} completed epoch(s); continue with: "
                    f"vfa train --resume {run_dir}" if done else "no epoch was completed")
        raise
    if trainer.is_global_zero:
        from vfa.training.curves import plot_history
        plot_history(run_dir / "history.csv", run_dir)
        remember(trainer.loggers, run_dir)
    return run_dir

