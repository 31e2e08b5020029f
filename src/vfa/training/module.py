"""The Lightning module: the notebook's fit_generator loop with its medical-metrics callback.

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

from vfa import config as config_mod
from vfa.stats.metrics import SCALAR_KEYS, format_line, med_metrics, scalars
from vfa.models.network import build_from_config, p_fracture
from vfa.runs import write_csv
from vfa.training.checkpointing import epoch_seed
from vfa.training.schedule import build_scheduler

# history.csv: one row per epoch, validation metrics under the same keys as test_metrics.json.
# Lightning-internal deprecation noise that users cannot act on
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")  # ours, on purpose
# fewer batches than trainer.log_every_n_steps: the epoch's loss is logged at its end all the same
warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")

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
            from vfa.runs import enable_compile_cache
            enable_compile_cache()
            self.model.compile()  # in place: state_dict keys (and checkpoints) stay as without compile
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight)))
        # data.augment_on=device: the loader yields gray, un-augmented images; augment whole batches here
        self.batch_augment = None
        if self.cfg.data.augment_on == "device" and self.cfg.augment != "none":
            from vfa.data.augment import Augment, get_augment_config
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
        seed_rank_stream(self._aug_rng, self)  # device augmentation
        # Lightning steps epoch schedulers before validation runs: record the rate this epoch used.
        self._epoch_lr = self.trainer.optimizers[0].param_groups[0]["lr"]

    def validation_step(self, batch, batch_idx):
        x, y, idx = batch
        self._val.append((p_fracture(self(x)).detach(), y, idx))

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


def append_history(path: Path, row: dict, keys=HISTORY_KEYS) -> None:
    """One row per epoch, appended (and flushed to disk): rows already written are never rewritten."""
    new = not Path(path).is_file() or Path(path).stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def keep_history_before(path: Path, epoch: int) -> int:
    """On resume from a checkpoint that completed `epoch` epochs: drop rows of later epochs (written
    after that checkpoint, by a run killed before its next one); returns how many were dropped."""
    rows = read_history(path)
    kept = [r for r in rows if int(r["epoch"]) < epoch]
    if len(kept) < len(rows):  # the file's own columns: an image run's or a per-vertebra run's
        write_csv(path, list(rows[0]), kept)
    return len(rows) - len(kept)


def read_history(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def seed_rank_stream(generator: torch.Generator, module: L.LightningModule) -> None:
    """Seed a module's own generator for this epoch: a stream per (seed, rank, epoch), so that DDP
    ranks draw differently and a resumed run (any rank) draws what an uninterrupted one would,
    with no generator state to carry in checkpoints."""
    generator.manual_seed(epoch_seed(module.cfg.seed, module.current_epoch, stream=module.global_rank))
