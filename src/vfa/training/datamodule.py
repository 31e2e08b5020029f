"""The Lightning data module: training and validation loaders from the one preprocessing path."""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from vfa.data.dataset import ImageDataset, create_dataset
from vfa.data.samples import Samples
from vfa.training.checkpointing import EpochSeededLoader


class VFADataModule(L.LightningDataModule):
    def __init__(self, cfg, train: Samples | None = None, val: Samples | None = None, start_epoch: int = 0):
        super().__init__()
        self.cfg = cfg
        self.train_samples, self.val_samples = train, val
        self.start_epoch = start_epoch  # a resumed run: the epochs its checkpoint completed

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        d = self.cfg.data
        kwargs = dict(batch_size=d.batch_size, num_workers=d.num_workers, pin_memory=torch.cuda.is_available(),
                      drop_last=False, persistent_workers=False)
        if not shuffle:
            return DataLoader(dataset, shuffle=False, **kwargs)
        # order and augmentation from (seed, epoch) alone: a resumed run repeats the uninterrupted one
        rank = self.trainer.global_rank if self.trainer is not None else 0
        if d.sampler == "balanced":   # the sampler draws from the loader's generator: (seed, epoch) still fix it
            generator = torch.Generator()
            return EpochSeededLoader(dataset, sampler=balanced_sampler(self.train_samples.labels, generator),
                                     generator=generator, seed=self.cfg.seed, epoch_fn=self._epoch, rank=rank,
                                     **kwargs)
        return EpochSeededLoader(dataset, shuffle=True, seed=self.cfg.seed, epoch_fn=self._epoch, rank=rank, **kwargs)

    def _epoch(self) -> int:
        """The epoch an iterator is made for: the count of epochs already processed. (Lightning makes
        a resumed run's first iterator before it restores its loop counters: `start_epoch` then.)"""
        if self.trainer is None:
            return self.start_epoch
        return max(self.start_epoch, int(self.trainer.fit_loop.epoch_progress.current.processed))

    def train_dataloader(self) -> DataLoader:
        if self.cfg.data.augment_on == "device":  # gray, un-augmented: 3x less to copy; the module augments
            return self._loader(self.eval_dataset(self.train_samples, channels=1), shuffle=True)
        return self._loader(create_dataset(self.cfg, self.train_samples, train=True), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(self.val_samples), shuffle=False)

    def eval_dataset(self, samples: Samples, channels: int = 3) -> ImageDataset:
        """Resized as training resizes (nearest for keras215), never augmented."""
        return create_dataset(self.cfg, samples, channels=channels)


def balanced_sampler(labels, generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """An epoch of len(labels) draws with replacement, each class half of them on average (weight
    1 / its count): the seed's class-balanced upsampling, with the epoch's length (and cost) unchanged."""
    y = torch.as_tensor(list(labels), dtype=torch.long)
    counts = torch.bincount(y, minlength=2).clamp_min(1).double()
    return WeightedRandomSampler((1.0 / counts)[y], num_samples=len(y), replacement=True, generator=generator)
