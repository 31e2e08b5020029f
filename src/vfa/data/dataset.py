"""Labelled image sets as torch Datasets.

`load_samples(folder_or_manifest)` (in `vfa.data.samples`) is the one way a data argument becomes
`Samples`; `create_dataset(cfg, samples)` pairs them with the one preprocessing path
(`vfa.data.transforms`). Images stream from disk through DataLoader workers.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vfa.data.samples import DataError, Samples
from vfa.data.transforms import Transform, create_transform


class ImageDataset(Dataset):
    """(image (C, H, W) in [0, 1], label float, index) per item."""

    def __init__(self, samples: Samples, transform: Transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples.paths)

    def load(self, i: int) -> torch.Tensor:
        """Decoded and resized, one gray channel (1, H, W)."""
        return self.transform.load(self.samples.paths[i])

    def __getitem__(self, i: int):
        return self.transform(self.samples.paths[i]), torch.tensor(float(self.samples.labels[i])), i

    def subset(self, indices) -> ImageDataset:
        return ImageDataset(self.samples.subset(list(indices)), self.transform)


def create_dataset(cfg, samples: Samples | list, labels: list[int] | None = None, train: bool = False,
                   channels: int = 3) -> ImageDataset:
    """A dataset of `samples` (or a list of paths, with optional `labels`) preprocessed as `cfg`
    (a run config, or a model carrying its checkpoint's config) says."""
    if not isinstance(samples, Samples):
        paths = [str(p) for p in samples]
        samples = Samples(paths, list(labels) if labels is not None else [-1] * len(paths), "")
    return ImageDataset(samples, create_transform(cfg, train=train, channels=channels))


def class_weight(labels: list[int], unit: str = "'frac' training image") -> float:
    """The notebook's positive-class weight n_norm / n_frac (norm keeps weight 1); `unit` names
    what a label belongs to (an image; a body, for the per-vertebra family) in the error."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=2)
    if counts[1] == 0:
        raise DataError(f"class weights need at least one {unit}")
    return float(counts[0] / counts[1])
