"""Inference: load a checkpoint safely and stream predictions over images.

Checkpoints are read with `torch.load(weights_only=True)`: tensors and plain containers only,
never pickled code. The checkpoint's saved config fixes the preprocessing (size, resize mode).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vfa import config as config_mod
from vfa.augment import get_augment_config
from vfa.data import ImageDataset, Samples
from vfa.model import VFANet, build_from_config


def load_model(path: str | Path, device: str | torch.device = "cpu") -> VFANet:
    """A VFANet in eval mode with its resolved config attached as `model.config`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a loadable vfa checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt.get("hyper_parameters", {}):
        raise ValueError(f"{path}: not a vfa checkpoint (no state_dict/config)")
    cfg = config_mod.from_dict(ckpt["hyper_parameters"]["config"])
    cfg.model.pretrained = False  # weights come from the checkpoint, never from a hub
    model = build_from_config(cfg.model)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.config = cfg
    return model.eval().to(device)


def eval_dataset(model: VFANet, paths: list[str], labels: list[int] | None = None) -> ImageDataset:
    cfg = model.config
    resize_mode = get_augment_config(cfg.augment, **cfg.augment_overrides).resize
    samples = Samples(list(paths), list(labels) if labels is not None else [-1] * len(paths), "")
    return ImageDataset(samples, cfg.data.size, None, resize_mode=resize_mode)


@torch.inference_mode()
def predict_loader(model: VFANet, loader, progress: bool = False) -> np.ndarray:
    """P(fracture) for every item of a DataLoader yielding (image, label, index); memory is O(batch)."""
    device = next(model.parameters()).device
    out = []
    iterator = loader
    if progress:
        from tqdm import tqdm
        iterator = tqdm(loader, desc="predict", unit="batch")
    for x, *_ in iterator:
        out.append(torch.sigmoid(model(x.to(device)).float()).cpu())
    return torch.cat(out).numpy() if out else np.empty(0, dtype=np.float32)


def predict(model: VFANet, images, batch_size: int = 16, num_workers: int = 0, progress: bool = False) -> np.ndarray:
    """P(fracture) for a list of image paths or a (B, 3, H, W) tensor already preprocessed to [0, 1]."""
    if isinstance(images, torch.Tensor):
        with torch.inference_mode():
            x = images.to(next(model.parameters()).device)
            return torch.sigmoid(model(x).float()).cpu().numpy()
    if isinstance(images, str | Path):
        images = [images]
    loader = DataLoader(eval_dataset(model, [str(p) for p in images]), batch_size=batch_size,
                        num_workers=num_workers)
    return predict_loader(model, loader, progress)


from vfa._callable import make_callable  # noqa: E402

make_callable(__name__, "predict")
