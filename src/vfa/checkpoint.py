"""The one place vfa checkpoints are read and written.

A checkpoint is a dict in Lightning's layout, so Lightning's `--resume` reads the ones it wrote:

  state_dict        {"model.<name>": tensor}: the network's weights (the training module's prefix)
  hyper_parameters  {"config": the resolved config as a plain dict, "pos_weight": float}
  vfa_threshold, vfa_temperature, vfa_threshold_source, vfa_calibration   (`vfa calibrate`)
  vfa_source        provenance (`vfa import-keras`)

plus, in training checkpoints, the optimizer and loop states only `--resume` uses.
Everything is read with `torch.load(weights_only=True)`: tensors and plain containers, never
pickled code, so a model file cannot run anything. `vfa.models.loading.load_model` builds the
network a checkpoint describes.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from vfa import config as config_mod
from vfa.runs import atomic_write, refuse_existing

DEFAULT_THRESHOLD_SOURCE = "default 0.5 (as the notebook)"


class CheckpointError(config_mod.ConfigError):
    """A file that is not a loadable vfa checkpoint."""


def load(path: str | Path, role: str = "model", mmap: bool = False) -> dict:
    """The checkpoint dict at `path`, validated. `role` names the option in error messages; `mmap`
    maps the tensors instead of reading them (a caller that wants only the config)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{role} file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch's own message advises weights_only=False: never do that with a model file
        unsafe = "weights_only" in str(exc) or "Unsupported global" in str(exc)
        why = ("it holds Python objects that only unpickling code could build, and vfa never runs code from a "
               "model file" if unsafe else f"damaged, truncated or not a PyTorch file ({type(exc).__name__})")
        raise CheckpointError(f"{path}: not a loadable vfa checkpoint: {why}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt.get("hyper_parameters", {}):
        raise CheckpointError(f"{path}: not a vfa checkpoint (no state_dict/config)")
    return ckpt


def config_of(ckpt: dict, path: str | Path = "checkpoint") -> config_mod.Config:
    """The checkpoint's stored config, validated as a user's would be (its data paths are never opened)."""
    try:
        cfg = config_mod.from_dict(ckpt["hyper_parameters"]["config"])
        config_mod.check(cfg)
    except (config_mod.ConfigError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: its stored config is not valid ({exc})") from None
    return cfg


def weights_of(ckpt: dict) -> dict:
    """The network's state dict (without the training module's `model.` prefix)."""
    return {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def save(path: str | Path, model: torch.nn.Module, cfg: config_mod.Config, force: bool = False,
         pos_weight: float = 1.0, **extra) -> Path:
    """Write `model`'s weights and `cfg` (plus `extra` vfa_* fields) as a checkpoint, atomically."""
    ckpt = {"state_dict": {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()},
            "hyper_parameters": {"config": config_mod.to_dict(cfg), "pos_weight": float(pos_weight)},
            **extra}
    return write(path, ckpt, force)


def update(src: str | Path, out: str | Path, force: bool = False, **fields) -> Path:
    """A copy of checkpoint `src` with vfa_* `fields` set (e.g. a calibrated threshold), at `out`."""
    ckpt = load(src)
    ckpt.update(fields)
    return write(out, ckpt, force)


def write(path: str | Path, ckpt: dict, force: bool = False) -> Path:
    path = refuse_existing(path, force)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write(path, buf.getvalue())
    return path
