"""Class-folder data as the notebook's `flow_from_directory(classes=['norm', 'frac'])`, on Lightning.

Images stream from disk through DataLoader workers. Every file is decoded once before a run
starts (`scan_folder` + `validate`), so a bad file stops the run with its name and reason, or is
skipped and reported, before the first epoch instead of halfway through it.
"""
from __future__ import annotations

import csv
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vfa.augment import Augment, get_augment_config, resize
from vfa.io import IMAGE_EXTENSIONS, BadImageError, read_image


class DataError(ValueError):
    """A dataset-level problem (missing folder, empty class, bad files under --on-bad-file error)."""


@dataclass
class Samples:
    paths: list[str]
    labels: list[int]
    root: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    classes: tuple[str, ...] = ("norm", "frac")

    def counts(self) -> dict[int, int]:
        return {c: self.labels.count(c) for c in sorted(set(self.labels))}


def scan_folder(root: str | Path, classes=("norm", "frac")) -> Samples:
    """List `root/<class>/*` images in sorted order; non-image files are recorded as skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    missing = [c for c in classes if not (root / c).is_dir()]
    if missing:
        raise DataError(f"{root}: missing class folder(s) {', '.join(missing)} (expected {'/'.join(classes)})")
    paths, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_dir() or path.name.startswith("."):
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(str(path))
                labels.append(label)
            else:
                skipped.append((str(path), f"not an image file (extension '{path.suffix}')"))
    return Samples(paths, labels, str(root), skipped, tuple(classes))


def _check(path: str) -> str | None:
    try:
        read_image(path)
    except BadImageError as exc:
        return exc.reason
    return None


def validate(samples: Samples, on_bad_file: str = "error", workers: int | None = None,
             need_classes: tuple[int, ...] = ()) -> Samples:
    """Decode every image in parallel; `error` raises naming every bad file, `skip` drops and records them."""
    if on_bad_file not in ("error", "skip"):
        raise ValueError(f"on_bad_file must be 'error' or 'skip', got '{on_bad_file}'")
    workers = workers or min(4, os.cpu_count() or 1)
    if workers > 1 and len(samples.paths) > 64:
        with ProcessPoolExecutor(workers) as pool:
            reasons = list(pool.map(_check, samples.paths, chunksize=16))
    else:
        reasons = [_check(p) for p in samples.paths]
    bad = [(p, r) for p, r in zip(samples.paths, reasons) if r is not None]
    problems = samples.skipped + bad
    if problems and on_bad_file == "error":
        listing = "\n".join(f"  {p}: {r}" for p, r in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} unusable file(s) under {samples.root} "
                        f"(use --on-bad-file skip to leave them out):\n{listing}{more}")
    keep = [i for i, r in enumerate(reasons) if r is None]
    out = Samples([samples.paths[i] for i in keep], [samples.labels[i] for i in keep], samples.root, problems, samples.classes)
    for c in need_classes:
        if c not in out.labels:
            raise DataError(f"{Path(samples.root) / samples.classes[c]}: no usable images (empty class folder?)")
    return out


def write_skipped(samples: Samples, path: str | Path) -> None:
    if not samples.skipped:
        return
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "reason"])
        writer.writerows(samples.skipped)


class ImageDataset(Dataset):
    """(image 3xHxW in [0, 1], label float, index) per item; augmentation draws from torch's RNG,
    which Lightning seeds per worker, so a seeded run is reproducible."""

    def __init__(self, samples: Samples, size: tuple[int, int], augment: str | None = None,
                 resize_mode: str | None = None, augment_overrides: dict | None = None):
        self.samples = samples
        self.size = tuple(size)
        cfg = get_augment_config(augment or "none", **(augment_overrides or {}))
        self.resize_mode = resize_mode or cfg.resize
        self.augment = Augment(cfg) if augment and augment != "none" else None

    def __len__(self) -> int:
        return len(self.samples.paths)

    def load(self, i: int) -> torch.Tensor:
        """Decoded and resized, one gray channel (1, H, W)."""
        img = torch.from_numpy(read_image(self.samples.paths[i]))[None]
        return resize(img, self.size, self.resize_mode)

    def __getitem__(self, i: int):
        img = self.load(i)
        if self.augment is not None:
            img = self.augment(img, channels=3)  # warps the gray channel once, shifts 3 channels
        else:
            img = img.expand(3, -1, -1)
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
        return self._loader(ImageDataset(self.train_samples, self.cfg.data.size, self.cfg.augment,
                                         augment_overrides=self.cfg.augment_overrides), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(self.val_samples), shuffle=False)

    def eval_dataset(self, samples: Samples) -> ImageDataset:
        # Evaluation resizes as training did (nearest for keras215) but never augments.
        resize_mode = get_augment_config(self.cfg.augment, **self.cfg.augment_overrides).resize
        return ImageDataset(samples, self.cfg.data.size, None, resize_mode=resize_mode)
