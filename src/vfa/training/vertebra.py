"""Training the per-vertebra model (model.family: vertebra): one Lightning loop trains the spine
detector on whole images and the landmark network on crops of the same batch, so a run has one
checkpoint, one resume and one history, as an image-level run has. The run itself is the image
family's (`vfa.training.train.fit`): the leakage check and skipped lists, class weights (over
bodies), `--init`, the augmentation preset (moving the six points), curves, loggers, per-rank seeds."""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.nn import functional as F

from vfa import config as config_mod
from vfa.data.samples import DataError
from vfa.data.transforms import create_transform
from vfa.data.vertebrae import VertebraDataset, find_table, read_vertebrae, truth_for
from vfa.models.crops import crop, to_crop
from vfa.models.vertebra import build_vertebra_model
from vfa.spine import POINT_COLUMNS
from vfa.stats.accuracy import delong_ci
from vfa.training.datamodule import VFADataModule
from vfa.training.module import append_history, seed_rank_stream
from vfa.training.train import Recipe, TrainingData, fit, load_data
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
        img, pts, present, grade, _, readable = batch
        v, (H, W) = self.cfg.vertebra, img.shape[-2:]
        det_in = F.interpolate(img, size=tuple(v.detector_size), mode="bilinear", antialias=True, align_corners=False)
        scale = (v.detector_size[1] / W, v.detector_size[0] / H)
        parts = detector_loss(self.model.detector(det_in), pts, present, scale, self.model.detector.stride)
        index, level, centre, axis, side = training_crops(
            pts, present, grade, v.bodies_per_image, v.crop_scale, v.jitter if train else 0.0, H / 16,
            self._crop_rng if train else None, all_bodies=not train)
        index, level, centre, axis, side = (t.to(img.device) for t in (index, level, centre, axis, side))
        q, logit, read_logit, severity = self.model.landmarks(crop(img, index, centre, axis, side, v.crop_size))
        body = pts[index, level]
        truth = to_crop(body, centre, axis, side)
        frac = (grade[index, level] > 0).float()
        parts["points"] = POINT_WEIGHT * F.l1_loss(q, truth)
        parts["fracture"], parts["readable"] = crop_losses(logit, frac, read_logit, readable[index, level],
                                                           self.pos_weight)
        # the severity head learns on detached features (vfa.models.vertebra), so its loss moves
        # nothing else; it is left out of the monitored loss, which picks the checkpoint as before
        sev = severity_loss(severity, grade[index, level], readable[index, level])
        extra = dict(err=(q - truth).norm(dim=-1).mean(1) * side / _body_height(body),
                     logit=logit.float(), frac=frac, severity=sev)
        return sum(parts.values()), dict(parts, **extra)

    def training_step(self, batch, batch_idx):
        loss, parts = self._losses(batch, train=True)
        self._loss_sum += float(loss.detach()) * len(batch[0])
        self._loss_n += len(batch[0])
        for key in ("heat", "offset", "level", "points", "fracture", "readable", "severity"):
            self.log(f"loss_{key}", parts[key], on_step=True, on_epoch=False)
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss + parts["severity"]

    def on_train_epoch_start(self):
        self._loss_sum, self._loss_n = 0.0, 0
        seed_rank_stream(self._crop_rng, self)  # each rank its own crops and jitter
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


def crop_losses(logit: torch.Tensor, frac: torch.Tensor, read_logit: torch.Tensor, readable: torch.Tensor,
                pos_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The crops' fracture loss (BCE, `pos_weight`) over the bodies the truth does not call unreadable
    (what a hidden body's grade looks like is not something to learn), and the readability loss (BCE)
    over the bodies whose truth says (`readable` 1 or 0; -1: not said). A table without `readable`
    adds an exact 0 and no gradient, so such a run trains as it did before the head existed."""
    keep = readable != 0
    if keep.all():
        fracture = F.binary_cross_entropy_with_logits(logit.float(), frac, pos_weight=pos_weight)
    elif keep.any():
        fracture = F.binary_cross_entropy_with_logits(logit.float()[keep], frac[keep], pos_weight=pos_weight)
    else:
        fracture = logit.new_zeros((), dtype=torch.float32)
    known = readable >= 0
    if not known.any():
        return fracture, read_logit.new_zeros((), dtype=torch.float32)
    return fracture, F.binary_cross_entropy_with_logits(read_logit.float()[known], readable[known].float())


def severity_loss(logits: torch.Tensor, grade: torch.Tensor, readable: torch.Tensor) -> torch.Tensor:
    """BCE of the severity head's two logits against grade >= 2 and grade >= 3 over the fractured
    bodies (grade >= 1) the truth does not call unreadable: how severe, given fractured (whether is the
    fracture head's), the cumulative form of an ordinal grade. No such body in the batch: an exact 0
    that keeps the head in the graph (zero gradients), so DDP never finds its parameters unused."""
    keep = (readable != 0) & (grade >= 1)
    if not keep.any():
        return logits.float().sum() * 0.0
    g = grade[keep].float()[:, None]
    target = (g >= torch.tensor([2.0, 3.0], device=g.device)).float()
    return F.binary_cross_entropy_with_logits(logits.float()[keep], target)


def _body_height(points: torch.Tensor) -> torch.Tensor:
    """(M, 6, 2) -> (M,) the body's largest of its anterior, middle and posterior heights."""
    return (points[:, 3:] - points[:, :3]).norm(dim=-1).amax(-1).clamp_min(1e-6)


BODY_UNIT = ("fractured body (grade >= 1) among the training images' rows of the per-vertebra table "
             "(or optim.class_weights=false)")


def load_vertebra_data(cfg, log=print) -> TrainingData:
    """The image family's checked sets (every file decoded, bad files per data.on_bad_file, no image
    or patient in two splits), each with its per-vertebra truth; class weights weigh the bodies."""
    tr, va = load_data(cfg, log=log, image_labels=False)
    d, tables, truth = cfg.data, {}, []
    # a validation split taken from the training manifest (no --val, or data.fold) shares its table
    for name, samples, source in (("training", tr, d.train), ("validation", va, d.val or d.train)):
        path = find_table(source, cfg.vertebra.table)
        if path not in tables:
            tables[path] = read_vertebrae(path)
        if POINT_COLUMNS[0] not in tables[path].columns:
            raise DataError(f"{path}: training needs the six points, not only grades")
        truth.append(truth_for(samples, tables[path], name))
        log(f"{name}: {len(samples.paths)} images, {sum(len(r) for r in truth[-1].values())} vertebrae")
    rows = list(truth[0].values())
    grades = np.concatenate([r["grade"].to_numpy() for r in rows]) if rows and "grade" in rows[0] else np.zeros(0)
    return TrainingData(tr, va, (grades > 0).astype(int).tolist(), BODY_UNIT, tuple(truth))


class VertebraDataModule(VFADataModule):
    """The image family's loaders (order and draws from (seed, epoch, global rank)) over the
    per-vertebra dataset; training images augmented by the config's preset, points moved with them."""

    def __init__(self, cfg, data: TrainingData, start_epoch: int = 0):
        super().__init__(cfg, data.train, data.val, start_epoch)
        self.truth = data.truth

    def train_dataloader(self):
        ds = VertebraDataset(self.train_samples, self.truth[0], create_transform(self.cfg, train=True, channels=1))
        return self._loader(ds, shuffle=True)

    def val_dataloader(self):
        return self._loader(VertebraDataset(self.val_samples, self.truth[1], create_transform(self.cfg, channels=1)),
                            shuffle=False)


def augment_on(cfg) -> str:
    """Per image, in the loader workers: the points move with each image's own draw."""
    if cfg.data.augment_on == "device":
        raise config_mod.ConfigError("data.augment_on=device augments batches of images on the device; a "
                                     "per-vertebra run moves each image's six points with its own draw, in the "
                                     "loader workers: use workers (or auto)")
    return "workers"


VERTEBRA = Recipe(VertebraModule, load_vertebra_data, VertebraDataModule, monitor=("val_loss", "min"),
                  augment_on=augment_on, loss_label="train loss (all parts)")


def train_vertebrae(cfg, out: str | Path, force: bool = False, resume: bool = False, log=print) -> Path:
    """Train the per-vertebra model as configured; returns the run directory (`resume`: continue
    from last.ckpt). The layout is an image-level run's: config.yaml, checkpoints/, history.csv,
    curves, logs/, skipped lists."""
    return fit(cfg, out, VERTEBRA, force, resume, log)
