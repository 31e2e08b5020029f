"""Test-time augmentation as the notebook ran it: n random passes per image, pooled by mean and max.

The transform is `vfa.augment.Augment` with the "tta" preset (rotation +-20 deg, zoom 0.9-1.1,
channel shift; "tta-keras215" is what Keras 2.1.5 executed), or with the model's own training
augmentation ("train", the default for models not trained with the notebook's augmentation). Each
image's parameters for pass j
come from a generator seeded by (seed, dataset index, j), so results do not depend on batch size,
worker count, device or order. Images stream: each batch is decoded once and augmented n times.
As in the notebook, the raw (unaugmented) prediction is not part of the mean/max pool.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vfa.config import AugmentConfig, ConfigError
from vfa.data.augment import Augment, get_augment_config
from vfa.models.network import p_fracture

# "train": the model's own training augmentation; "auto": the notebook's TTA for a model trained
# with the notebook's augmentation (seed, keras215), "train" for any other
TTA_PRESETS = ("auto", "train", "tta", "tta-keras215")


def resolve_tta_preset(preset: str, cfg) -> str:
    """The TTA preset a model gets: "auto" resolved from its training config (a model config)."""
    if preset not in TTA_PRESETS:
        raise ConfigError(f"--tta-preset must be one of {', '.join(TTA_PRESETS)}, got {preset!r}")
    if preset != "auto":
        return preset
    if cfg.augment in ("seed", "keras215") and not cfg.augment_overrides:
        return "tta-keras215" if cfg.augment == "keras215" else "tta"
    return "train"


def tta_name(preset: str, members) -> str:
    """The resolved preset of every member, once each ("tta", or "train, tta" for a mixed ensemble)."""
    return ", ".join(dict.fromkeys(resolve_tta_preset(preset, m.config) for m in members))


def tta_config(preset: str, cfg) -> AugmentConfig:
    """The augmentation TTA draws from: a fixed preset, or the model's training augmentation (with
    its resize: a TTA pass sees what a training step saw)."""
    name = resolve_tta_preset(preset, cfg)
    if name == "train":
        return get_augment_config(cfg.augment, **cfg.augment_overrides)
    return get_augment_config(name)


@dataclass
class TTAResult:
    raw: np.ndarray                 # (N,) P(fracture) without augmentation
    passes: np.ndarray              # (N, n) one column per augmented pass
    mean: np.ndarray | None         # (N,) mean over passes; None when n == 0
    max: np.ndarray | None          # (N,) max over passes (the notebook's "max augmented predictions")
    labels: np.ndarray              # (N,) as the dataset gave them (-1 for unlabeled)
    index: np.ndarray               # (N,) dataset indices, in output order


def _generator(seed: int, index: int, j: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, index, j]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def draw_params(augment: Augment, indices, j: int, seed: int, size: tuple[int, int], channels: int = 3) -> dict:
    """Batch parameters for pass j: one seeded draw per image, stacked to (B,) / (B, C) tensors."""
    draws = [augment.draw(_generator(seed, int(i), j), 1, size=size, channels=channels) for i in indices]
    return {k: torch.cat([d[k] for d in draws]) for k in draws[0]}


def _probs(model, x: torch.Tensor) -> torch.Tensor:
    return p_fracture(model(x), getattr(model, "temperature", 1.0)).cpu()


@torch.inference_mode()
def tta_batch(model, x: torch.Tensor, indices: list[int], n: int, augment: Augment, seed: int = 0):
    """(raw (B,), passes (B, n)) P(fracture) of one preprocessed batch on the model's device; pass j of
    dataset item i is drawn from (seed, i, j), so a batch gives the same numbers wherever it runs."""
    raw = _probs(model, x)
    # Eval images are gray replicated to 3 channels: warp one channel, as training does.
    src = x[:, :1] if x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2]) else x
    cols = []
    for j in range(n):
        params = draw_params(augment, indices, j, seed, tuple(x.shape[-2:]), x.shape[1])
        cols.append(_probs(model, augment.apply(src, params).contiguous()))
    return raw, (torch.stack(cols, 1) if cols else torch.empty(len(x), 0))


@torch.inference_mode()
def tta_predict(model, data: Dataset | DataLoader, n: int, preset: str = "tta", seed: int = 0,
                batch_size: int = 16, num_workers: int = 0, progress: bool = False) -> TTAResult:
    """Raw, per-pass, mean and max P(fracture) over a dataset (or a loader of (x, label, index))."""
    if n < 0:
        raise ValueError(f"TTA passes must be >= 0, got {n}")
    augment = Augment(get_augment_config(preset))
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size,
                                                                  num_workers=num_workers)
    device = next(model.parameters()).device
    raw, passes, labels, index = [], [], [], []
    iterator = loader
    if progress:
        from tqdm import tqdm
        iterator = tqdm(loader, desc=f"predict{f' + TTA x{n}' if n else ''}", unit="batch")
    for x, y, idx in iterator:
        r, ps = tta_batch(model, x.to(device), idx.tolist(), n, augment, seed)
        raw.append(r)
        passes.append(ps)
        labels.append(torch.as_tensor(y).reshape(-1).float())
        index.append(torch.as_tensor(idx).reshape(-1))
    if not raw:
        empty = np.empty(0, dtype=np.float32)
        return TTAResult(empty, np.empty((0, n), np.float32), None if n == 0 else empty,
                         None if n == 0 else empty, empty, np.empty(0, dtype=np.int64))
    r, ps = torch.cat(raw).numpy(), torch.cat(passes).numpy()
    return TTAResult(r, ps, ps.mean(1) if n else None, ps.max(1) if n else None,
                     torch.cat(labels).numpy(), torch.cat(index).numpy())
