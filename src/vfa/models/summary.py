"""`vfa summary`: the configured model's layer table, parameter count and FLOPs at its input size."""
from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities.model_summary import ModelSummary

from vfa.models.network import build_from_config


class _Wrapped(L.LightningModule):
    """Lightning's ModelSummary reads LightningModules; the table's rows are the network's (`model.*`)."""

    def __init__(self, model: torch.nn.Module, example: torch.Tensor):
        super().__init__()
        self.model, self.example_input_array = model, example

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def summary(cfg, max_depth: int = 2) -> str:
    h, w = cfg.data.size
    model = build_from_config(cfg.model)
    module = _Wrapped(model, torch.zeros(1, 3, h, w)).eval()
    table = ModelSummary(module, max_depth=max_depth)
    flops = table.total_flops
    backbone = sum(p.numel() for p in model.backbone.parameters())
    head = sum(p.numel() for p in model.head.parameters())
    lines = [str(table), "",
             f"preset {cfg.preset}: {cfg.model.backbone} at {h}x{w}, head {list(cfg.model.head)}"
             f"{' + BatchNorm' if cfg.model.head_batchnorm else ''}",
             f"parameters: backbone {backbone:,} + head {head:,} = {backbone + head:,}",
             f"FLOPs per image (forward, multiply-add = 2): {flops / 1e9:.2f} G"]
    return "\n".join(lines)
