"""Training on Lightning: the notebook's fit_generator loop with its medical-metrics and SGDR callbacks.

`train(cfg, out)` is the library entry point the CLI wraps. Accelerator, devices, num_nodes,
strategy and precision pass straight through to Lightning's Trainer, so DDP needs no extra code.
Validation metrics are computed over every validation image exactly once: predictions are
gathered from all ranks and de-duplicated by dataset index (DistributedSampler pads).
"""
from __future__ import annotations

import csv
import math
import os
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

from vfa import config as config_mod
from vfa import runs
from vfa.data import VFADataModule, class_weight, validate, write_skipped
from vfa.metrics import SCALAR_KEYS, format_line, med_metrics, scalars
from vfa.model import build_from_config
from vfa.schedule import build_scheduler

# history.csv: one row per epoch, validation metrics under the same keys as test_metrics.json.
# Lightning-internal deprecation noise that users cannot act on
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")  # ours, on purpose

HISTORY_KEYS = ("epoch", "train_loss", "lr", *SCALAR_KEYS)


class VFAModule(L.LightningModule):
    def __init__(self, config: dict, pos_weight: float = 1.0):
        super().__init__()
        self.save_hyperparameters()  # the resolved config travels inside every checkpoint
        self.cfg = config_mod.from_dict(config)
        self.model = build_from_config(self.cfg.model)
        if self.cfg.model.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.cfg.model.compile:
            from vfa.export import enable_compile_cache
            enable_compile_cache()
            self.model.compile()  # in place: state_dict keys (and checkpoints) stay as without compile
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight)))
        # data.augment_on=device: the loader yields gray, un-augmented images; augment whole batches here
        self.batch_augment = None
        if self.cfg.data.augment_on == "device" and self.cfg.augment != "none":
            from vfa.augment import Augment, get_augment_config
            self.batch_augment = Augment(get_augment_config(self.cfg.augment, **self.cfg.augment_overrides))
        self._aug_rng = torch.Generator()
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._loss_sum, self._loss_n, self._t0 = 0.0, 0, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y, idx = batch
        if x.shape[1] == 1:  # from the device-augmentation loader
            if self.batch_augment is not None and self.trainer.training:
                # parameters drawn on the CPU (float64, seeded), applied to the batch where it is
                x = self.batch_augment(x, self._aug_rng, channels=3)
            else:
                x = x.expand(-1, 3, -1, -1)
        return x, y, idx

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        logits = self(x)
        # pos_weight == Keras class_weight {0: 1, 1: w}: both give mean(w_i * bce_i).
        loss = F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=self.pos_weight)
        self._loss_sum += float(loss.detach()) * len(y)
        self._loss_n += len(y)
        now = time.perf_counter()
        if self._t0 is not None:
            self.log("img_s", len(y) * self.trainer.world_size / (now - self._t0), prog_bar=True, on_step=True)
        self._t0 = now
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_start(self):
        self._loss_sum, self._loss_n, self._t0 = 0.0, 0, None
        # device augmentation: a stream per (seed, rank, epoch), so a resumed run (any rank) draws
        # what an uninterrupted one would, with no generator state to carry in checkpoints
        self._aug_rng.manual_seed((self.cfg.seed * 1_000_003 + self.global_rank) * 10_007 + self.current_epoch)
        # Lightning steps epoch schedulers before validation runs: record the rate this epoch used.
        self._epoch_lr = self.trainer.optimizers[0].param_groups[0]["lr"]

    def validation_step(self, batch, batch_idx):
        x, y, idx = batch
        self._val.append((torch.sigmoid(self(x).float()).detach(), y, idx))

    def on_validation_epoch_start(self):
        self._val = []

    def gathered_predictions(self):
        """(probs, labels) over all ranks, each validation image exactly once, in index order."""
        probs = torch.cat([v[0] for v in self._val]) if self._val else torch.empty(0, device=self.device)
        labels = torch.cat([v[1] for v in self._val]) if self._val else torch.empty(0, device=self.device)
        idx = torch.cat([v[2] for v in self._val]) if self._val else torch.empty(0, device=self.device)
        if self.trainer.world_size > 1:
            probs, labels, idx = (self.all_gather(t).reshape(-1) for t in (probs, labels, idx))
        idx, order = idx.long().cpu(), None
        uniq, first = _first_occurrence(idx)
        order = first[torch.argsort(uniq)]
        return probs.cpu()[order].numpy(), labels.cpu()[order].numpy()

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        probs, labels = self.gathered_predictions()
        md = med_metrics(labels, probs, with_curve=False)
        values = scalars(md)
        for key, value in values.items():
            self.log(f"val_{key}", float(value), prog_bar=key in ("auc", "sn", "sp"), sync_dist=False)
        lr = getattr(self, "_epoch_lr", math.nan)
        row = {"epoch": self.current_epoch,
               "train_loss": self._loss_sum / self._loss_n if self._loss_n else math.nan,
               "lr": lr, **values}
        if self.trainer.is_global_zero:
            self.print(f"\nEpoch {self.current_epoch}  val {format_line(md)}  (n={md['n']})"
                       + (f"  [{'; '.join(md['notes'])}]" if md["notes"] else ""))
            append_history(Path(self.trainer.default_root_dir) / "history.csv", row)

    def configure_optimizers(self):
        o = self.cfg.optim
        opt = torch.optim.Adam(self.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        if not o.sgdr:
            return opt
        steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // max(1, self.trainer.max_epochs))
        return {"optimizer": opt, "lr_scheduler": build_scheduler(
            opt, o.sgdr_steps, o.sgdr_cycles, o.sgdr_exp, o.sgdr_per_step, steps_per_epoch)}


def _first_occurrence(idx: torch.Tensor):
    """Unique values of idx and the position of each one's first occurrence."""
    uniq, inverse = torch.unique(idx, return_inverse=True)
    positions = torch.arange(idx.numel())
    first = torch.full((uniq.numel(),), idx.numel(), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return uniq, first


def append_history(path: Path, row: dict) -> None:
    """One row per epoch; a re-run epoch (after resume) replaces its earlier row."""
    rows = read_history(path)
    rows = [r for r in rows if int(r["epoch"]) < row["epoch"]] + [row]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_KEYS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_history(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_data(cfg, train: bool = True, log=print):
    """Scan and fully decode the training/validation (and --test) sets before any work starts;
    refuse bad files (per data.on_bad_file), an image or a patient in two splits, a validation
    set with a single class. Each data argument is a class folder or a manifest CSV."""
    from vfa.data import (DataError, check_leakage, duplicates_within, is_manifest, leakage_error,
                          load_samples, manifest_splits, split_source)
    from vfa.io.normalize import parse

    d = cfg.data
    parse(d.normalize)
    if d.train is None:
        raise config_mod.ConfigError("data.train is not set (pass --train DIR or MANIFEST.csv)")
    train_samples = load_samples(d.train, d.classes, split="train")  # a missing path fails first
    val = d.val
    if val is None and is_manifest(d.train) and "val" in manifest_splits(d.train):
        val = str(split_source(d.train)[0])  # a split manifest: its 'val' rows
    if val is None:
        raise config_mod.ConfigError("data.val is not set (pass --val DIR or MANIFEST.csv)")
    tr = validate(train_samples, d.on_bad_file, need_classes=(0, 1), frame=d.frame)
    va = validate(load_samples(val, d.classes, split="val"), d.on_bad_file, frame=d.frame)
    sets = {"train": tr, "val": va}
    if getattr(d, "test", None):
        sets["test"] = validate(load_samples(d.test, d.classes, split="test"), d.on_bad_file, frame=d.frame)
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

def make_trainer(cfg, run_dir: Path, extra_callbacks=()) -> L.Trainer:
    t = cfg.trainer
    ckpt_dir = run_dir / "checkpoints"
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_auc", mode="max",
                           save_last=True, save_top_k=1, enable_version_counter=False,
                           # saving after the epoch (not mid-loop at validation end) makes a resume
                           # start at the next epoch instead of repeating this one
                           save_on_train_epoch_end=True)
    callbacks = [best, *extra_callbacks]
    if t.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=5))
    return L.Trainer(
        default_root_dir=str(run_dir), max_epochs=cfg.optim.epochs, accelerator=t.accelerator,
        devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision,
        deterministic=t.deterministic, callbacks=callbacks, logger=False, num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps, enable_progress_bar=t.progress,
        limit_train_batches=t.limit_train_batches, enable_model_summary=False)


ARCHITECTURE_KEYS = ("backbone", "head", "head_batchnorm", "global_pool", "backbone_kwargs")


def load_init(cfg, log=print) -> dict:
    """The model weights of `cfg.model.init_from` (a vfa checkpoint, e.g. from `vfa import-keras`),
    read with `torch.load(weights_only=True)`. The architecture keys of `cfg.model` are set to the
    checkpoint's (the weights decide them); a preprocessing different from the checkpoint's is noted."""
    from vfa.augment import get_augment_config

    path = Path(cfg.model.init_from)
    if not path.is_file():
        raise FileNotFoundError(f"--init checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise config_mod.ConfigError(f"--init {path}: not a loadable vfa checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt.get("hyper_parameters", {}):
        raise config_mod.ConfigError(f"--init {path}: not a vfa checkpoint (no state_dict/config)")
    src = config_mod.from_dict(ckpt["hyper_parameters"]["config"])
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
    return {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


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
    last = run_dir / "checkpoints" / "last.ckpt"
    init_state = load_init(cfg, log) if cfg.model.init_from and not resume else None
    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"nothing to resume: {last} does not exist")
    else:
        runs.prepare_run_dir(run_dir, force)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cfg.data.augment_on = resolve_augment_on(cfg)
    cfg.trainer.precision = resolve_precision(cfg)
    tr, va = load_data(cfg, log=log)
    if not resume:
        runs.write_run_files(run_dir, cfg)
    write_skipped(tr, run_dir / "skipped_train.csv")
    write_skipped(va, run_dir / "skipped_val.csv")
    pos_weight = class_weight(tr.labels) if cfg.optim.class_weights else 1.0
    log(f"positive-class weight: {pos_weight:.3f}")
    module = VFAModule(config_mod.to_dict(cfg), pos_weight)
    if init_state is not None:
        module.model.load_state_dict(init_state)
        log(f"initial weights: {cfg.model.init_from}")
    trainer = make_trainer(cfg, run_dir)
    trainer.fit(module, datamodule=VFADataModule(cfg, tr, va), ckpt_path=str(last) if resume else None,
                weights_only=True if resume else None)
    if trainer.is_global_zero:
        from vfa.curves import plot_history
        plot_history(run_dir / "history.csv", run_dir)
    return run_dir


from vfa._callable import make_callable  # noqa: E402

make_callable(__name__, "train")
