"""SGDR as the notebook did it: a per-epoch list of cosine multipliers scaled by max_lr.

Per-step restarts use torch's `CosineAnnealingWarmRestarts`, which equals the list below when
stepped once per epoch.
"""
from __future__ import annotations

import numpy as np
import torch


def cos_sgdr(steps_per_cycle: int) -> list[float]:
    """One cosine cycle falling from 1 towards (never reaching) 0 over `steps_per_cycle` values.

    The notebook used `np.arange(0, 1, 1/n)`, which yields n+1 values for some n (49, 98, ...)
    through floating-point error; `arange(n) / n` gives exactly n.
    """
    sched = np.arange(steps_per_cycle) / steps_per_cycle
    return list((np.cos(np.pi * sched) + 1) / 2)


def cos_sgdr_sched(steps_per_cycle: int, cycles: int, exp: int) -> list[float]:
    """Cycles of length steps * exp**c, concatenated (the evident intent of the printed function)."""
    sched: list[float] = []
    for cycle in range(cycles):
        sched.extend(cos_sgdr(steps_per_cycle * exp**cycle))
    return sched


def sgdr_lambda(steps: int, cycles: int, exp: int):
    """LambdaLR multiplier for epoch e; epochs past the schedule repeat its last value."""
    sched = cos_sgdr_sched(steps, cycles, exp)
    return lambda epoch: float(sched[min(epoch, len(sched) - 1)])


def build_scheduler(optimizer: torch.optim.Optimizer, steps: int, cycles: int, exp: int,
                    per_step: bool, steps_per_epoch: int) -> dict:
    """A Lightning `lr_scheduler` config dict."""
    if per_step:
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=max(1, steps * steps_per_epoch), T_mult=exp)
        return {"scheduler": sched, "interval": "step"}
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, sgdr_lambda(steps, cycles, exp))
    return {"scheduler": sched, "interval": "epoch"}
