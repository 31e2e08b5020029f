"""The one preprocessing path, built from a config: read -> frame -> normalize -> resize -> channels
(-> augment when training).

As timm's `resolve_data_config` -> `create_transform`: `resolve_data_config(cfg_or_model)` reads
what a run (or a checkpoint's stored config) says about its input, and `create_transform` builds
the callable every caller uses: training, evaluation, prediction, heatmaps, calibration, the LR
finder and the augmentation preview. A model loaded from a checkpoint therefore sees its images
exactly as it saw them in training.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from vfa.config import AugmentConfig, Config, get_augment_config
from vfa.data.augment import Augment, resize
from vfa.io import read_image
from vfa.io.normalize import parse as parse_normalize


@dataclass(frozen=True)
class DataSpec:
    """What a model expects of its input."""
    size: tuple[int, int]
    resize: str = "bilinear"        # "bilinear" | "nearest" (the keras215 preset)
    normalize: str | None = "seed"  # vfa.io.normalize
    frame: int | None = None        # frame of multi-frame files (None: refuse them)


def resolve_data_config(cfg: Config | torch.nn.Module, size: tuple[int, int] | None = None) -> DataSpec:
    """The DataSpec of a run config, or of a model carrying one (`model.config`, from a checkpoint)."""
    cfg = getattr(cfg, "config", cfg)
    d = cfg.data
    spec = DataSpec(size=tuple(size or d.size), resize=get_augment_config(cfg.augment, **cfg.augment_overrides).resize,
                    normalize=getattr(d, "normalize", "seed"), frame=getattr(d, "frame", None))
    parse_normalize(spec.normalize)  # a bad value fails here, not in a worker mid-epoch
    return spec


class Transform:
    """path -> (channels, H, W) float32 in [0, 1]. With `augment`, random draws come from torch's
    global RNG (which Lightning seeds per worker), so a seeded run is reproducible."""

    def __init__(self, spec: DataSpec, augment: AugmentConfig | None = None, channels: int = 3):
        self.spec, self.channels = spec, channels
        self.augment = Augment(augment) if augment is not None else None

    def read(self, path) -> np.ndarray:
        """(H, W) at the file's own resolution, framed and normalized: what overlays are drawn on."""
        return read_image(path, self.spec.frame, self.spec.normalize)

    def load(self, path) -> torch.Tensor:
        """Read and resized, one gray channel (1, H, W), not augmented."""
        return resize(torch.from_numpy(self.read(path))[None], self.spec.size, self.spec.resize)

    def load_scaled(self, path) -> tuple[torch.Tensor, torch.Tensor]:
        """`load`, and the (x, y) factors from the file's pixels to the returned ones (points drawn
        on the file are at these coordinates times the factors)."""
        gray = self.read(path)
        img = resize(torch.from_numpy(gray)[None], self.spec.size, self.spec.resize)
        return img, torch.tensor([img.shape[2] / gray.shape[1], img.shape[1] / gray.shape[0]])

    def __call__(self, path) -> torch.Tensor:
        return self.prepare(self.read(path))

    def prepare(self, gray: np.ndarray) -> torch.Tensor:
        """What `read` returned -> the model's input: resized (and augmented), `channels` channels."""
        img = resize(torch.from_numpy(gray)[None], self.spec.size, self.spec.resize)
        if self.augment is not None:
            img = self.augment(img, channels=self.channels)  # warps the gray channel once, shifts each
        else:
            img = img.expand(self.channels, -1, -1)
        return img.contiguous()

    def __repr__(self) -> str:
        return f"Transform({self.spec}, augment={self.augment}, channels={self.channels})"


def create_transform(cfg: Config | torch.nn.Module, train: bool = False, channels: int = 3,
                     augment: AugmentConfig | None = None, size: tuple[int, int] | None = None) -> Transform:
    """The preprocessing of `cfg` (a run config or a model with `.config`). `train=True` adds the
    config's augmentation (none for the "none" preset); `augment` gives one explicitly instead."""
    spec = resolve_data_config(cfg, size)
    if augment is None and train:
        c = getattr(cfg, "config", cfg)
        if c.augment != "none":
            augment = get_augment_config(c.augment, **c.augment_overrides)
    if augment is not None:
        spec = dataclasses.replace(spec, resize=augment.resize)
    return Transform(spec, augment, channels)
