"""A checkpoint (`vfa.checkpoint`) -> the network it describes, on the device asked for."""
from __future__ import annotations

from pathlib import Path

import torch

from vfa import checkpoint
from vfa import config as config_mod
from vfa.models.network import VFANet
from vfa.registry import FAMILIES, Family


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """auto: the GPU when there is one (CUDA, else Apple MPS), else the CPU; or cpu, cuda, cuda:N, mps."""
    if isinstance(device, torch.device):
        return device
    name = str(device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise config_mod.ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise config_mod.ConfigError(f"--device {name}: no such CUDA device here "
                                     f"({torch.cuda.device_count()} visible)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise config_mod.ConfigError("--device mps: Apple's MPS is not available here")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise config_mod.ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    return dev


def load_model(path: str | Path, device: str | torch.device = "cpu") -> VFANet:
    """A VFANet in eval mode on `device` (see `resolve_device`) with `model.config`,
    `model.threshold` (default 0.5), `model.temperature` (default 1.0) and `model.threshold_source`."""
    device = resolve_device(device)
    ckpt = checkpoint.load(path)
    cfg = checkpoint.config_of(ckpt, path)
    cfg.model.pretrained = False  # weights come from the checkpoint, never from a hub
    family = FAMILIES.of(cfg)
    model = family.step("build")(cfg)
    model.load_state_dict(checkpoint.weights_of(ckpt))
    return with_decision(model, ckpt, cfg, family).eval().to(device)


def with_decision(model: torch.nn.Module, ckpt: dict, cfg, family: Family) -> torch.nn.Module:
    """`model` with what a checkpoint says beside its weights: config, threshold, temperature, the
    threshold's source (the attributes every command reads of a loaded model) and the class weight
    it was trained with (`pos_weight`: 1.0 when none was stored)."""
    model.config = cfg
    model.pos_weight = float(ckpt.get("hyper_parameters", {}).get("pos_weight", 1.0))
    model.threshold = float(ckpt.get("vfa_threshold", family.default_threshold(cfg)))
    model.temperature = float(ckpt.get("vfa_temperature", 1.0))
    model.threshold_source = str(ckpt.get("vfa_threshold_source", checkpoint.DEFAULT_THRESHOLD_SOURCE))
    return model


def checkpoint_family(path: str | Path) -> Family:
    """The family (vfa.registry.FAMILIES) of one checkpoint, from its config; the weights are only
    memory-mapped, not read."""
    return FAMILIES.of(checkpoint.config_of(checkpoint.load(path, mmap=True), path))
