"""`vfa summary`: the configured model's layer table, parameter count and FLOPs at its input size,
through its family's summary step (vfa.registry.FAMILIES)."""
from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities.model_summary import ModelSummary

from vfa.models.network import build_from_config
from vfa.registry import FAMILIES


class _Wrapped(L.LightningModule):
    """Lightning's ModelSummary reads LightningModules; the table's rows are the network's (`model.*`)."""

    def __init__(self, model: torch.nn.Module, example: torch.Tensor):
        super().__init__()
        self.model, self.example_input_array = model, example

    def forward(self, x: torch.Tensor):
        return self.model(x)


def _table(model: torch.nn.Module, example: torch.Tensor, max_depth: int) -> ModelSummary:
    return ModelSummary(_Wrapped(model, example).eval(), max_depth=max_depth)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def summary(cfg, max_depth: int = 2) -> str:
    """The summary of `cfg`'s model, whichever its family."""
    return FAMILIES.of(cfg).step("summary")(cfg, max_depth)


def image_summary(cfg, max_depth: int = 2) -> str:
    h, w = cfg.data.size
    model = build_from_config(cfg.model)
    table = _table(model, torch.zeros(1, 3, h, w), max_depth)
    backbone, head = _count(model.backbone), _count(model.head)
    lines = [str(table), "",
             f"preset {cfg.preset}: {cfg.model.backbone} at {h}x{w}, head {list(cfg.model.head)}"
             f"{' + BatchNorm' if cfg.model.head_batchnorm else ''}",
             f"parameters: backbone {backbone:,} + head {head:,} = {backbone + head:,}",
             f"FLOPs per image (forward, multiply-add = 2): {table.total_flops / 1e9:.2f} G"]
    return "\n".join(lines)


def vertebra_summary(cfg, max_depth: int = 2) -> str:
    """Both networks of a per-vertebra model: the detector at its input size on the whole image,
    the landmark network on one body's crop (an image costs the detector once and the landmark
    network twice per body found: two refinement passes)."""
    from vfa.models.vertebra import build_network

    v, net = cfg.vertebra, build_network(cfg)
    det = _table(net.detector, torch.zeros(1, 1, *v.detector_size), max_depth)
    crop = _table(net.landmarks, torch.zeros(1, 1, v.crop_size, v.crop_size), max_depth)
    nd, nl = _count(net.detector), _count(net.landmarks)
    lines = ["spine detector", str(det), "", "landmark network (one crop)", str(crop), "",
             f"preset {cfg.preset}: per-vertebra reader, {v.detector_backbone} detector at "
             f"{v.detector_size[0]}x{v.detector_size[1]}, {v.landmark_backbone} landmarks on "
             f"{v.crop_size}x{v.crop_size} crops",
             f"parameters: detector {nd:,} + landmarks {nl:,} = {nd + nl:,}",
             f"FLOPs (forward, multiply-add = 2): detector {det.total_flops / 1e9:.2f} G per image, "
             f"landmarks {crop.total_flops / 1e9:.3f} G per crop"]
    return "\n".join(lines)
