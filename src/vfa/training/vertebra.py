"""Training the per-vertebra model (model.family: vertebra): one Lightning loop trains the spine
detector on whole images and the landmark network on crops of the same batch, so a run has one
checkpoint, one resume and one history, as an image-level run has."""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from vfa import config as config_mod, runs
from vfa.data.samples import DataError, load_samples, validate
from vfa.data.transforms import create_transform
from vfa.data.vertebrae import VertebraDataset, find_table, read_vertebrae, truth_for
from vfa.errors import RunInterrupted
from vfa.models.crops import crop, to_crop
from vfa.models.vertebra import build_vertebra_model
from vfa.stats.accuracy import delong_ci
from vfa.training.checkpointing import EpochSeededLoader, completed_epochs_in, resume_point
from vfa.training.module import append_history, keep_history_before
from vfa.training.train import make_trainer, resolve_precision
from vfa.training.vertebra_targets import detector_loss, training_crops

HISTORY_KEYS = ("epoch", "train_loss", "lr", "val_loss", "val_point_error", "val_auc")
POINT_WEIGHT = 20.0   # crop units (errors ~0.01) against the detector's losses (~0.1-1)


class VertebraModule(L.LightningModule):
    def __init__(self, config: dict, pos_weight: float = 1.0):
        super().__init__()
        self.save_hyperparameters()  # the resolved config travels inside every checkpoint
        self.cfg = config_mod.from_dict(config)
        self.model = build_vertebra_model(self.cfg.vertebra)
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight)))
        self._crop_rng = torch.Generator()
        self._val: list = []
        self._loss_sum, self._loss_n = 0.0, 0

    def _losses(self, batch, train: bool) -> tuple[torch.Tensor, dict]:
        img, pts, present, grade, _ = batch
        v, (H, W) = self.cfg.vertebra, img.shape[-2:]
        det_in = F.interpolate(img, size=tuple(v.detector_size), mode="bilinear", antialias=True, align_corners=False)
        scale = (v.detector_size[1] / W, v.detector_size[0] / H)
        parts = detector_loss(self.model.detector(det_in), pts, present, scale, self.model.detector.stride)
        index, level, centre, axis, side = training_crops(
            pts, present, grade, v.bodies_per_image, v.crop_scale, v.jitter if train else 0.0, H / 16,
            self._crop_rng if train else None, all_bodies=not train)
        index, level, centre, axis, side = (t.to(img.device) for t in (index, level, centre, axis, side))
        q, logit = self.model.landmarks(crop(img, index, centre, axis, side, v.crop_size))
        body = pts[index, level]
        truth = to_crop(body, centre, axis, side)
        frac = (grade[index, level] > 0).float()
        parts["points"] = POINT_WEIGHT * F.l1_loss(q, truth)
        parts["fracture"] = F.binary_cross_entropy_with_logits(logit.float(), frac, pos_weight=self.pos_weight)
        extra = dict(err=(q - truth).norm(dim=-1).mean(1) * side / _body_height(body),
                     logit=logit.float(), frac=frac)
        return sum(parts.values()), dict(parts, **extra)

    def training_step(self, batch, batch_idx):
        loss, parts = self._losses(batch, train=True)
        self._loss_sum += float(loss.detach()) * len(batch[0])
        self._loss_n += len(batch[0])
        for key in ("heat", "offset", "level", "points", "fracture"):
            self.log(f"loss_{key}", parts[key], on_step=True, on_epoch=False)
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_start(self):
        self._loss_sum, self._loss_n = 0.0, 0
        self._crop_rng.manual_seed((self.cfg.seed * 1_000_003 + self.global_rank) * 10_007 + self.current_epoch)
        self._epoch_lr = self.trainer.optimizers[0].param_groups[0]["lr"]

    def validation_step(self, batch, batch_idx):
        loss, parts = self._losses(batch, train=False)
        self._val.append((float(loss) * len(batch[0]), len(batch[0]), parts["err"].detach().cpu(),
                          parts["logit"].detach().cpu(), parts["frac"].detach().cpu()))

    def on_validation_epoch_start(self):
        self._val = []

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking or not self._val:
            return
        loss = sum(v[0] for v in self._val) / sum(v[1] for v in self._val)
        err = float(torch.cat([v[2] for v in self._val]).mean())
        y, logit = torch.cat([v[4] for v in self._val]).numpy(), torch.cat([v[3] for v in self._val]).numpy()
        auc = delong_ci(y, logit)["auc"] if 0 < y.sum() < len(y) else math.nan
        for key, value in (("val_loss", loss), ("val_point_error", err), ("val_auc", auc)):
            self.log(key, float(value), prog_bar=True)
        row = dict(epoch=self.current_epoch, train_loss=self._loss_sum / max(self._loss_n, 1),
                   lr=getattr(self, "_epoch_lr", math.nan), val_loss=loss, val_point_error=err, val_auc=auc)
        if self.trainer.is_global_zero:
            self.print(f"\nEpoch {self.current_epoch}  val loss {loss:.4f}  point error {100 * err:.2f} % of the "
                       f"body's height  per-vertebra AUC {auc:.4f}")
            append_history(Path(self.trainer.default_root_dir) / "history.csv", row, HISTORY_KEYS)

    def configure_optimizers(self):
        o = self.cfg.optim
        opt = torch.optim.AdamW(self.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = max(1, total // (2 * max(1, self.trainer.max_epochs)))   # half an epoch of warm-up, then cosine
        lam = lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))  # noqa: E731
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lam),
                                                   "interval": "step"}}


def _body_height(points: torch.Tensor) -> torch.Tensor:
    """(M, 6, 2) -> (M,) the body's largest of its anterior, middle and posterior heights."""
    return (points[:, 3:] - points[:, :3]).norm(dim=-1).amax(-1).clamp_min(1e-6)


def load_vertebra_data(cfg, log=print):
    """(train, val) samples, every file decoded and checked, and their per-vertebra truth."""
    d = cfg.data
    if not d.train or not d.val:
        raise config_mod.ConfigError("a per-vertebra model needs --train and --val (each with vertebrae.csv beside it)")
    out = []
    for name, source in (("training", d.train), ("validation", d.val)):
        samples = validate(load_samples(source, d.classes, split="train" if name == "training" else "val"),
                           d.on_bad_file, frame=d.frame, min_side=d.min_side)
        path = find_table(source, cfg.vertebra.table)
        table = read_vertebrae(path)
        if "sup_ant_x" not in table.columns:
            raise DataError(f"{path}: training needs the six points, not only grades")
        out += [samples, truth_for(samples, table, name)]
        log(f"{name}: {len(samples.paths)} images, {sum(len(r) for r in out[-1].values())} vertebrae")
    return out


def _loader(cfg, samples, truth, shuffle: bool, epoch_fn=None) -> DataLoader:
    ds = VertebraDataset(samples, truth, create_transform(cfg, channels=1))
    kw = dict(batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, drop_last=False)
    if shuffle:
        return EpochSeededLoader(ds, shuffle=True, seed=cfg.seed, epoch_fn=epoch_fn, rank=0, **kw)
    return DataLoader(ds, shuffle=False, **kw)


def train_vertebrae(cfg, out: str | Path, force: bool = False, resume: bool = False, log=print) -> Path:
    """Train the per-vertebra model as configured; returns the run directory (`resume`: continue
    from last.ckpt). The layout is an image-level run's: config.yaml, checkpoints/, history.csv."""
    run_dir = Path(out)
    done, last = 0, None
    if resume:
        last, done = resume_point(run_dir, log)
        if cfg.optim.epochs <= done:
            raise config_mod.ConfigError(f"{run_dir} has already trained {done} epoch(s); pass --epochs above {done}")
    else:
        runs.check_out(run_dir, [cfg.data.train, cfg.data.val, cfg.data.test], "folder")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cfg.trainer.precision = resolve_precision(cfg)
    tr, tr_truth, va, va_truth = load_vertebra_data(cfg, log)
    if not resume:
        runs.prepare_run_dir(run_dir, force, [cfg.data.train, cfg.data.val, cfg.data.test])
        runs.write_run_files(run_dir, cfg)
    else:
        runs.atomic_write(run_dir / "config.yaml", config_mod.dump(cfg))
        runs.remove_temporaries(run_dir, "checkpoints")
        keep_history_before(run_dir / "history.csv", done)
    grades = np.concatenate([r["grade"].to_numpy() for r in tr_truth.values()]) if "grade" in next(
        iter(tr_truth.values())) else np.zeros(1)
    pos_weight = float((grades == 0).sum() / max((grades > 0).sum(), 1))
    module = VertebraModule(config_mod.to_dict(cfg), pos_weight)
    trainer = make_trainer(cfg, run_dir, monitor=("val_loss", "min"))
    epoch_fn = lambda: max(done, int(trainer.fit_loop.epoch_progress.current.processed))  # noqa: E731
    try:
        trainer.fit(module, _loader(cfg, tr, tr_truth, True, epoch_fn), _loader(cfg, va, va_truth, False),
                    ckpt_path=str(last) if resume else None, weights_only=True if resume else None)
    except RunInterrupted as exc:
        n = completed_epochs_in(run_dir)
        exc.hint = (f"{run_dir / 'checkpoints' / 'last.ckpt'} holds {n} completed epoch(s); continue with: "
                    f"vfa train --resume {run_dir}" if n else "no epoch was completed")
        raise
    return run_dir
