"""What makes a killed run resumable without loss: checkpoints written atomically next to their
target (never through $TMPDIR), `last.ckpt` after every epoch with the previous one kept as a
fallback, and data order and augmentation drawn from (seed, epoch) alone, so that a resumed run
repeats exactly what an uninterrupted one would have done."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

from vfa import checkpoint
from vfa.runs import atomic_write

LAST, PREVIOUS = "last.ckpt", "last.ckpt.prev"


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A seed for one epoch's random draws: a function of the run's seed and the epoch only."""
    return ((int(seed) * 1_000_003 + int(stream)) * 10_007 + int(epoch)) % (2**63 - 1)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into memory, then a temporary file beside the target, fsync and rename: a kill
    or a full disk leaves the old checkpoint or the new one, never a broken one. Before last.ckpt
    is replaced, the current one is kept as last.ckpt.prev (a hard link: no moment without it)."""

    def save_checkpoint(self, ckpt, path, storage_options=None) -> None:
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        path = Path(path)
        if path.name == LAST and path.is_file():
            prev_tmp = path.with_name(f".{PREVIOUS}.{os.getpid()}.tmp")
            prev_tmp.unlink(missing_ok=True)
            try:
                os.link(path, prev_tmp)
            except OSError:  # a filesystem without hard links (SMB, FUSE mounts): copy instead
                shutil.copyfile(path, prev_tmp)
            os.replace(prev_tmp, path.with_name(PREVIOUS))
        atomic_write(path, buf.getvalue())


def checkpoint_callbacks(ckpt_dir: Path, monitor: tuple[str, str] = ("val_auc", "max")) -> list[ModelCheckpoint]:
    """best.ckpt when the `monitor` metric (validation AUC) improves; last.ckpt after every epoch. Both
    are saved after the epoch (not mid-loop at validation end), so a resume starts at the next epoch."""
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor[0], mode=monitor[1], save_top_k=1,
                           enable_version_counter=False, save_on_train_epoch_end=True)
    # (save_last=True would write last.ckpt only when best.ckpt improves: not after every epoch)
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                           enable_version_counter=False, save_on_train_epoch_end=True)
    return [best, last]


def resume_point(run_dir: Path, log=print) -> tuple[Path, int]:
    """(the checkpoint to resume from, the number of epochs it completed): last.ckpt, or when that
    one cannot be read, last.ckpt.prev, saying so."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    last, prev = ckpt_dir / LAST, ckpt_dir / PREVIOUS
    if not last.is_file():  # last.ckpt.prev alone is never used: it may be another run's
        raise FileNotFoundError(f"nothing to resume: {last} does not exist")
    try:
        return last, completed_epochs(checkpoint.load(last, "resume checkpoint"))
    except checkpoint.CheckpointError as exc:
        if not prev.is_file():
            raise
        ckpt = checkpoint.load(prev, "resume checkpoint")
        log(f"warning: {exc}; resuming from the epoch before it ({prev})")
        return prev, completed_epochs(ckpt)


def completed_epochs_in(run_dir: Path) -> int:
    """Epochs held by the run's last.ckpt (0 when there is none or it cannot be read)."""
    try:
        return resume_point(run_dir, log=lambda m: None)[1]
    except (FileNotFoundError, checkpoint.CheckpointError):
        return 0


def training_summary(run_dir: Path, test_metrics: dict | None = None) -> str:
    """The line `vfa train` ends with: best.ckpt's epoch (from 0, as history.csv) and its monitored
    metric, the held-out test AUC when there is one, the checkpoint, and the next command."""
    best = Path(run_dir) / "checkpoints" / "best.ckpt"
    ckpt = checkpoint.load(best, "best checkpoint", mmap=True)
    state = next((v for v in ckpt.get("callbacks", {}).values() if v.get("monitor")), {})
    score = state.get("best_model_score")
    metric = f", {state['monitor']} {float(score):.3f}" if score is not None else ""
    test = (test_metrics or {}).get("auc")
    held_out = f"; held-out test AUC {test:.3f}" if isinstance(test, float) and test == test else ""
    return (f"trained: best epoch {ckpt.get('epoch', '?')}{metric}{held_out}; {best}; next: "
            f"vfa evaluate --model {best} --data DATA --out {Path(run_dir) / 'eval'}")


def completed_epochs(ckpt: dict) -> int:
    """Epochs whose training and validation a Lightning checkpoint holds (its fit loop's processed
    count: the same whether it was saved at an epoch's end or at the end of training)."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return int(ckpt.get("epoch", -1)) + 1


class EpochSeededLoader(DataLoader):
    """A shuffling DataLoader whose order, worker seeds (hence augmentation) and the main process's
    random draws (augmentation without workers, dropout) depend only on (seed, epoch, rank):
    `epoch_fn()` gives the epoch when the epoch's iterator is made, which is the first thing of an
    epoch both in a run and in a resumed one. Lightning re-creates loaders from their attributes,
    so every argument is kept under its own name."""

    def __init__(self, *args, seed: int = 0, epoch_fn=None, rank: int = 0, **kwargs):
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(*args, **kwargs)
        self.seed, self.epoch_fn, self.rank = seed, epoch_fn, rank

    def __iter__(self):
        epoch = self.epoch_fn() if self.epoch_fn is not None else 0
        self.generator.manual_seed(epoch_seed(self.seed, epoch, stream=1))
        torch.manual_seed(epoch_seed(self.seed, epoch, stream=2 + self.rank))
        return super().__iter__()
