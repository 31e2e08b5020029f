"""Training on Lightning: data checks, the trainer and its checkpoints, precision and devices.

`train(cfg, out)` trains one image-level model (`vfa.train`, in `vfa.api`, adds the held-out test
evaluation). `fit` is the run both model families share (the per-vertebra one passes its own
`Recipe`, vfa.training.vertebra): the leakage check and skipped lists, class weights, `--init`,
resume, curves and loggers. Accelerator, devices, num_nodes, strategy and precision pass straight
through to Lightning's Trainer, so DDP needs no extra code.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar

from vfa import checkpoint
from vfa import config as config_mod
from vfa import runs
from vfa.data.dataset import class_weight
from vfa.data.samples import Samples, validate, write_skipped
from vfa.errors import RunInterrupted
from vfa.training.checkpointing import AtomicCheckpointIO, checkpoint_callbacks, completed_epochs_in, resume_point
from vfa.training.datamodule import VFADataModule
from vfa.training.module import VFAModule, keep_history_before
from vfa.registry import FAMILIES
from vfa.training.tracking import make_loggers, remember

class Bar(TQDMProgressBar):
    """Lightning's bar without `v_num` (the logger's version: "oard", the tail of "tensorboard")."""

    def get_metrics(self, trainer, pl_module):
        return {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}


def load_data(cfg, train: bool = True, log=print, image_labels: bool = True):
    """Scan and fully decode the training/validation (and --test) sets before any work starts;
    refuse bad files (per data.on_bad_file), an image or a patient in two splits, a validation
    set with a single class. Each data argument is a class folder or a manifest CSV.
    `image_labels=False` (the per-vertebra family, which learns from its bodies' table) drops the
    two checks of the images' own labels: both classes in training, both in validation."""
    from vfa.data.samples import (DataError, check_leakage, duplicates_within, is_manifest, leakage_error,
                                  load_samples, manifest_splits, split_source)
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
    tr = validate(train_samples, d.on_bad_file, need_classes=(0, 1) if image_labels else (), frame=d.frame,
                  min_side=d.min_side)
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
    if image_labels and len(set(va.labels)) < 2:
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
        callbacks.append(Bar(refresh_rate=5))
    loggers = make_loggers(cfg, run_dir)
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    return L.Trainer(
        default_root_dir=str(run_dir), max_epochs=cfg.optim.epochs, accelerator=t.accelerator,
        devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision,
        deterministic=determinism(cfg), callbacks=callbacks, logger=loggers or False, num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps, enable_progress_bar=t.progress,
        limit_train_batches=t.limit_train_batches, enable_model_summary=False, plugins=[AtomicCheckpointIO()])


def load_init(cfg, log=print) -> dict:
    """The model weights of `cfg.model.init_from` (a vfa checkpoint of the run's own model family,
    e.g. from `vfa import-keras`), read with `torch.load(weights_only=True)`. The architecture keys
    of the run's config are set to the checkpoint's (the weights decide them); a preprocessing
    different from the checkpoint's is noted."""
    from vfa.data.augment import get_augment_config

    ckpt = checkpoint.load(cfg.model.init_from, role="--init checkpoint")
    src = checkpoint.config_of(ckpt, cfg.model.init_from)
    theirs, ours = src.model.family, cfg.model.family
    if theirs != ours:  # the families' networks share no layer: no weight could carry over
        raise config_mod.ConfigError(f"--init {cfg.model.init_from} holds a model.family {theirs} model and this run "
                                     f"trains model.family {ours}: --init starts from a checkpoint of the run's own "
                                     f"family")
    section, keys = FAMILIES.of(cfg).architecture  # the keys whose values shape the weights
    mine, its = getattr(cfg, section), getattr(src, section)
    changed = [k for k in keys if getattr(mine, k) != getattr(its, k)]
    for key in keys:
        setattr(mine, key, getattr(its, key))
    mine.pretrained = False
    if changed:
        log("model from the --init checkpoint: " + ", ".join(f"{section}.{k}={getattr(its, k)!r}" for k in changed))
    resize = [get_augment_config(c.augment, **c.augment_overrides).resize for c in (src, cfg)]
    if (tuple(src.data.size) != tuple(cfg.data.size) or resize[0] != resize[1]
            or src.data.normalize != cfg.data.normalize):
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


@dataclass(frozen=True)
class TrainingData:
    """What a family's loader read and checked: the sets (their skipped files go to the run folder)
    and the labels `optim.class_weights` weighs: the training images' or, per vertebra, the bodies'."""
    train: Samples
    val: Samples
    weighed: list[int]
    unit: str = "'frac' training image"  # what one weighed label belongs to, for the error without positives
    truth: tuple = ()                    # per-vertebra: the (training, validation) truth tables


def _image_data(cfg, log=print) -> TrainingData:
    tr, va = load_data(cfg, log=log)
    return TrainingData(tr, va, tr.labels)


@dataclass(frozen=True)
class Recipe:
    """What differs between the model families' training runs; `fit` does the rest for both."""
    module: type                 # the LightningModule: module(config dict, pos_weight)
    load: Callable               # (cfg, log) -> TrainingData
    datamodule: Callable         # (cfg, TrainingData, start epoch) -> LightningDataModule
    monitor: tuple[str, str] = ("val_auc", "max")   # best.ckpt's metric
    augment_on: Callable = resolve_augment_on       # cfg -> where augmentation runs
    loss_label: str = "train loss (weighted BCE)"   # curves_loss.png


IMAGE = Recipe(VFAModule, _image_data, lambda cfg, data, start: VFADataModule(cfg, data.train, data.val, start))


def train(cfg, out: str | Path, force: bool = False, resume: bool = False, log=print) -> Path:
    """Train an image-level model as configured; returns the run directory. `resume=True` continues
    `out` from last.ckpt; `cfg.model.init_from` (`vfa train --init CKPT`) starts from that
    checkpoint's weights."""
    return fit(cfg, out, IMAGE, force, resume, log)


def fit(cfg, out: str | Path, recipe: Recipe, force: bool = False, resume: bool = False, log=print) -> Path:
    """One training run of `recipe`'s family: `train`'s steps, the same for every family."""
    run_dir = Path(out)
    inputs = [cfg.data.train, cfg.data.val, cfg.data.test, cfg.model.init_from, cfg.vertebra.table]
    init_state = load_init(cfg, log) if cfg.model.init_from and not resume else None
    last, done = _start_point(cfg, run_dir, resume, inputs, log)
    # a config that cannot build its network (an unknown backbone) fails before minutes of decoding; built
    # before the seeding, so the run's own initial weights are drawn exactly as before
    FAMILIES.of(cfg).step("build")(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cfg.data.augment_on = recipe.augment_on(cfg)
    cfg.trainer.precision = resolve_precision(cfg)
    data = recipe.load(cfg, log)  # every file decoded and checked before the disk is touched
    _prepare(run_dir, cfg, data, force, resume, inputs, done, last, log)
    pos_weight = positive_weight(cfg, data)
    sampler = "; classes balanced by the sampler" if cfg.data.sampler == "balanced" else ""
    log(f"positive-class weight: {pos_weight:.3f}{sampler}; training on {_training_device(cfg)}, precision "
        f"{cfg.trainer.precision}")
    module = recipe.module(config_mod.to_dict(cfg), pos_weight)
    if init_state is not None:
        module.model.load_state_dict(init_state)
        log(f"initial weights: {cfg.model.init_from}")
    trainer = make_trainer(cfg, run_dir, monitor=recipe.monitor)
    try:
        trainer.fit(module, datamodule=recipe.datamodule(cfg, data, done), ckpt_path=str(last) if resume else None,
                    weights_only=True if resume else None)
    except RunInterrupted as exc:
        done = completed_epochs_in(run_dir)
        exc.hint = (f"{run_dir / 'checkpoints' / 'last.ckpt'} holds {done} completed epoch(s); continue with: "
                    f"vfa train --resume {run_dir}" if done else "no epoch was completed")
        raise
    if trainer.is_global_zero:
        from vfa.training.curves import plot_history
        plot_history(run_dir / "history.csv", run_dir, recipe.loss_label)
        remember(trainer.loggers, run_dir)
    return run_dir


def positive_weight(cfg, data: TrainingData) -> float:
    """`optim.class_weights`: n_negative / n_positive of what the family weighs (the training images,
    or per vertebra their bodies); off: 1."""
    return class_weight(data.weighed, data.unit) if cfg.optim.class_weights else 1.0


def _start_point(cfg, run_dir: Path, resume: bool, inputs: list, log) -> tuple[Path | None, int]:
    """(the checkpoint a resumed run continues from, the epochs it completed); (None, 0) for a new run,
    whose --out is checked before any data is read: one that would overwrite an input fails at once."""
    if not resume:
        runs.check_out(run_dir, inputs, "folder")
        return None, 0
    last, done = resume_point(run_dir, log)
    if cfg.optim.epochs <= done:
        raise config_mod.ConfigError(f"{run_dir} has already trained {done} epoch(s); to extend it, pass "
                                     f"--epochs above {done}")
    return last, done


def _prepare(run_dir: Path, cfg, data: TrainingData, force: bool, resume: bool, inputs: list, done: int,
             last: Path | None, log) -> None:
    """The run folder before training: a new run's marker and config, or a resumed run's config with
    what --epochs / --set changed (so the next --resume knows it) and its history cut back to its
    checkpoint; the skipped lists. Under DDP the first rank alone writes."""
    if not resume:
        runs.prepare_run_dir(run_dir, force, inputs, ddp=True)
        runs.write_run_files(run_dir, cfg)
    if runs.is_secondary_rank():
        return
    if resume:
        runs.atomic_write(run_dir / "config.yaml", config_mod.dump(cfg))
        runs.remove_temporaries(run_dir, "checkpoints")  # what a killed write left behind
        dropped = keep_history_before(run_dir / "history.csv", done)
        # epochs are numbered from 0, as in history.csv and the progress bar
        log(f"resuming {run_dir} at epoch {done} (epochs 0-{done - 1} done, {last.name})"
            + (f"; {dropped} history row(s) of the unfinished epoch dropped" if dropped else ""))
    write_skipped(data.train, run_dir / "skipped_train.csv")
    write_skipped(data.val, run_dir / "skipped_val.csv")
