"""`vfa summary`: the configured model's layer table, parameter count and FLOPs at its input size."""
from __future__ import annotations

import torch
from lightning.pytorch.utilities.model_summary import ModelSummary

from vfa import config as config_mod


def summary(cfg, max_depth: int = 2) -> str:
    from vfa.train import VFAModule

    module = VFAModule(config_mod.to_dict(cfg))
    h, w = cfg.data.size
    module.example_input_array = torch.zeros(1, 3, h, w)
    module.eval()
    table = ModelSummary(module, max_depth=max_depth)
    flops = table.total_flops
    backbone = sum(p.numel() for p in module.model.backbone.parameters())
    head = sum(p.numel() for p in module.model.head.parameters())
    lines = [str(table), "",
             f"preset {cfg.preset}: {cfg.model.backbone} at {h}x{w}, head {list(cfg.model.head)}"
             f"{' + BatchNorm' if cfg.model.head_batchnorm else ''}",
             f"parameters: backbone {backbone:,} + head {head:,} = {backbone + head:,}",
             f"FLOPs per image (forward, multiply-add = 2): {flops / 1e9:.2f} G"]
    return "\n".join(lines)
