"""Helpers shared by test modules (import them from here, never from another test module)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vfa import config as config_mod

# a tiny resnet18 config for end-to-end runs on the tiny phantom
TINY = ["data.size=[96,56]", "model.backbone=resnet18", "model.head=[16]", "data.batch_size=8",
        "data.num_workers=0", "trainer.progress=false", "optim.lr=1e-3",
        "trainer.precision=32-true"]  # fp32 so that a single-process evaluate reproduces training-time metrics


def tiny_cfg(phantom, epochs=1):
    return config_mod.resolve("cpu-demo", overrides=config_mod.merged_dict(
        config_mod.parse_set(TINY),
        {"data": {"train": str(phantom / "train"), "val": str(phantom / "val")}, "optim": {"epochs": epochs}}))


def write_folder(root, n_per_class=4, size=(48, 32), seed=0, classes=("norm", "frac")):
    """A class-folder set of tiny gray PNGs; frac images are brighter so a model can tell them apart."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = (rng.random(size) * 120 + 60 * label).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{name}_{i:03d}.png")
    return root


def make_checkpoint(path, seed=0):
    """A random-weight vfa checkpoint (resnet18 at 64x40), written by the one checkpoint writer."""
    from vfa import checkpoint
    from vfa.models.network import build_from_config

    cfg = config_mod.resolve("cpu-demo", overrides=config_mod.parse_set(
        ["data.size=[64,40]", "model.backbone=resnet18", "model.head=[16]"]))
    torch.manual_seed(seed)
    return checkpoint.save(path, build_from_config(cfg.model), cfg, force=True)


def model_env(root, train=3, val=5, test=4) -> dict:
    """Two random-weight checkpoints (ckpt, ckpt_b) and train/val/test class folders of n images per
    class, each folder with its own images (no leakage between them)."""
    return {"ckpt": make_checkpoint(root / "a.ckpt"), "ckpt_b": make_checkpoint(root / "b.ckpt", seed=1),
            "train": write_folder(root / "train", n_per_class=train, seed=0),
            "val": write_folder(root / "val", n_per_class=val, seed=1),
            "test": write_folder(root / "test", n_per_class=test, seed=2), "root": root}
