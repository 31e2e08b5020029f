"""Labelled image sets from class folders (the notebook's `flow_from_directory(classes=['norm',
'frac'])`) or from a manifest CSV, on Lightning.

`load_samples(folder_or_manifest)` (in `vfa.samples`, re-exported here) is the one way a data
argument becomes `Samples`, for train, evaluate, calibrate and predict alike; see `vfa.samples`
for the manifest format.

Images stream from disk through DataLoader workers. Every file is decoded once before a run
starts (`validate`), so a bad file stops the run with its name and reason, or is skipped and
reported, before the first epoch instead of halfway through it; the same pass hashes the decoded
pixels so that `check_leakage` can refuse an image or a patient that sits in two splits.
"""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vfa.augment import Augment, get_augment_config, resize
from vfa.io import read_image
from vfa.samples import (MANIFEST_PATH_COLUMNS, DataError, Samples, check_leakage, duplicates_within,  # noqa: F401
                         inspect_all, is_manifest, leakage_error, load_samples, manifest_splits, read_manifest,
                         scan_folder, split_source, validate, write_skipped)


class ImageDataset(Dataset):
    """(image 3xHxW in [0, 1], label float, index) per item; augmentation draws from torch's RNG,
    which Lightning seeds per worker, so a seeded run is reproducible."""

    def __init__(self, samples: Samples, size: tuple[int, int], augment: str | None = None,
                 resize_mode: str | None = None, augment_overrides: dict | None = None,
                 normalize: str | None = None, frame: int | None = None, channels: int = 3):
        from vfa.io.normalize import parse

        parse(normalize)  # a bad value fails here, not in a worker mid-epoch
        self.samples = samples
        self.size = tuple(size)
        self.normalize, self.frame, self.channels = normalize, frame, channels
        cfg = get_augment_config(augment or "none", **(augment_overrides or {}))
        self.resize_mode = resize_mode or cfg.resize
        self.augment = Augment(cfg) if augment and augment != "none" else None

    def __len__(self) -> int:
        return len(self.samples.paths)

    def load(self, i: int) -> torch.Tensor:
        """Decoded and resized, one gray channel (1, H, W)."""
        img = torch.from_numpy(read_image(self.samples.paths[i], self.frame, self.normalize))[None]
        return resize(img, self.size, self.resize_mode)

    def __getitem__(self, i: int):
        img = self.load(i)
        if self.augment is not None:
            img = self.augment(img, channels=self.channels)  # warps the gray channel once, shifts each
        else:
            img = img.expand(self.channels, -1, -1)
        return img.contiguous(), torch.tensor(float(self.samples.labels[i])), i


def class_weight(labels: list[int]) -> float:
    """The notebook's positive-class weight n_norm / n_frac (norm keeps weight 1)."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=2)
    if counts[1] == 0:
        raise DataError("class weights need at least one 'frac' training image")
    return float(counts[0] / counts[1])


class VFADataModule(L.LightningDataModule):
    def __init__(self, cfg, train: Samples | None = None, val: Samples | None = None):
        super().__init__()
        self.cfg = cfg
        self.train_samples, self.val_samples = train, val

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        d = self.cfg.data
        return DataLoader(dataset, batch_size=d.batch_size, shuffle=shuffle, num_workers=d.num_workers,
                          pin_memory=torch.cuda.is_available(), drop_last=False,
                          persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        d = self.cfg.data
        if d.augment_on == "device":  # gray, un-augmented: 3x less to copy; VFAModule augments the batch
            return self._loader(self.eval_dataset(self.train_samples, channels=1), shuffle=True)
        return self._loader(ImageDataset(self.train_samples, d.size, self.cfg.augment,
                                         augment_overrides=self.cfg.augment_overrides, normalize=d.normalize,
                                         frame=d.frame), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(self.val_samples), shuffle=False)

    def eval_dataset(self, samples: Samples, channels: int = 3) -> ImageDataset:
        # Evaluation resizes as training did (nearest for keras215) but never augments.
        resize_mode = get_augment_config(self.cfg.augment, **self.cfg.augment_overrides).resize
        d = self.cfg.data
        return ImageDataset(samples, d.size, None, resize_mode=resize_mode, normalize=d.normalize, frame=d.frame,
                            channels=channels)
