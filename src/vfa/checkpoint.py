"""The one place vfa checkpoints are read and written.

A checkpoint is a dict in Lightning's layout, so Lightning's `--resume` reads the ones it wrote:

  state_dict        {"model.<name>": tensor}: the network's weights (the training module's prefix)
  hyper_parameters  {"config": the resolved config as a plain dict, "pos_weight": float}
  vfa_threshold, vfa_temperature, vfa_threshold_source, vfa_calibration   (`vfa calibrate`)
  vfa_source        provenance (`vfa import-keras`)

plus, in training checkpoints, the optimizer and loop states only `--resume` uses.
Everything is read with `torch.load(weights_only=True)`: tensors and plain containers, never
pickled code, so a model file cannot run anything. `vfa.models.loading.load_model` builds the
network a checkpoint describes. Wherever a checkpoint is named (--model, --init), a run folder
(`vfa train`'s --out) stands for its checkpoints/best.ckpt (`resolve`).
"""
from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vfa import config as config_mod
from vfa.runs import atomic_write, refuse_existing

if TYPE_CHECKING:
    import torch

DEFAULT_THRESHOLD_SOURCE = "default 0.5 (as the notebook)"
RUN_CHECKPOINT = Path("checkpoints") / "best.ckpt"  # the model a `vfa train` run folder stands for
ONNX_SUFFIXES = (".onnx",)
# run folders already announced: --model's paths are resolved where they are listed and again where
# each is loaded, and the user should read the line once
_announced: set[Path] = set()


class CheckpointError(config_mod.ConfigError):
    """A file that is not a loadable vfa checkpoint."""


def resolve(path: str | Path, role: str = "model") -> Path:
    """`path`, or for a run folder its checkpoints/best.ckpt (said on stderr, once per folder). A
    folder without one is refused naming the checkpoints it does hold. Torch-free."""
    path = Path(path)
    if not path.is_dir():
        return path
    best = path / RUN_CHECKPOINT
    if not best.is_file():
        held = sorted(str(p.relative_to(path)) for p in (*path.glob("*.ckpt"), *path.glob("checkpoints/*.ckpt")))
        hint = (f"it holds {', '.join(held)}: pass one of them" if held
                else "pass a .ckpt file, or the folder of a vfa train run")
        raise FileNotFoundError(f"{role} {path} is a folder without {RUN_CHECKPOINT.as_posix()}; {hint}")
    if path.resolve() not in _announced:
        _announced.add(path.resolve())
        print(f"{role} {path} is a run folder: using its {RUN_CHECKPOINT.as_posix()}", file=sys.stderr)
    return best


def load(path: str | Path, role: str = "model", mmap: bool = False) -> dict:
    """The checkpoint dict at `path` (a run folder: see `resolve`), validated. `role` names the
    option in error messages; `mmap` maps the tensors instead of reading them (a caller that wants
    only the config)."""
    import torch  # here, so that `resolve` (every --model goes through it) stays torch-free

    path = resolve(path, role)
    if not path.is_file():
        raise FileNotFoundError(f"{role} file not found: {path}")
    if path.suffix.lower() in ONNX_SUFFIXES:
        raise CheckpointError(f"{path} is an ONNX export (vfa export), not a vfa checkpoint: pass the .ckpt it was "
                              f"exported from (e.g. RUN/checkpoints/best.ckpt, or the run folder RUN); to run it "
                              f"through ONNX Runtime, add --backend onnxruntime to that checkpoint")
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
    import torch

    path = refuse_existing(path, force)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write(path, buf.getvalue())
    return path
