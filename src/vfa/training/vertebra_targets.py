"""Training targets and losses of the per-vertebra model: CenterNet's for the detector (Gaussian
centre heatmap with its focal loss, sub-cell offset, level class at and around each centre), and
the crops the landmark network learns on (every fractured body, then normal ones, with jitter)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from vfa.models.crops import frames


def centres_of(points: torch.Tensor) -> torch.Tensor:
    """(..., 6, 2) points -> (..., 2) body centres (their mean)."""
    return points.mean(-2)


def detector_loss(out: dict, points: torch.Tensor, present: torch.Tensor, scale: tuple[float, float],
                  stride: int) -> dict[str, torch.Tensor]:
    """Heat (focal), offset (L1) and level (cross-entropy) losses. `points` (B, 13, 6, 2) in working
    px; `scale` (x, y) maps working px to the detector's input px."""
    heat = out["heat"].float()
    b, _, h, w = heat.shape
    cells = centres_of(points) * torch.tensor(scale, device=heat.device) / stride       # (B, 13, 2)
    peak = cells.floor().clamp(min=0)
    peak[..., 0].clamp_(max=w - 1)
    peak[..., 1].clamp_(max=h - 1)
    bi, li = present.nonzero(as_tuple=True)
    ys = torch.arange(h, device=heat.device, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, device=heat.device, dtype=torch.float32)[None, :] + 0.5
    target = torch.zeros(b, h, w, device=heat.device)
    for img in range(b):   # sigma from this spine's own spacing: about a fifth of it
        sel = li[bi == img]
        if len(sel) == 0:
            continue
        c = peak[img, sel] + 0.5
        d = torch.diff(cells[img, sel], dim=0).norm(dim=-1) / torch.diff(sel).clamp(min=1)
        sigma = max(0.5, float(d.median()) / 5) if len(d) else 1.0
        g = torch.exp(-((xs[None] - c[:, None, None, 0]) ** 2 + (ys[None] - c[:, None, None, 1]) ** 2) / (2 * sigma ** 2))
        target[img] = g.amax(0)
    p = heat[:, 0].sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target > 0.999
    n_pos = max(int(pos.sum()), 1)
    focal = -(torch.log(p) * (1 - p) ** 2 * pos + torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * ~pos).sum() / n_pos
    py, px = peak[bi, li, 1].long(), peak[bi, li, 0].long()
    offset = F.l1_loss(out["offset"].float()[bi, :, py, px], cells[bi, li] - peak[bi, li])
    # the level class at the centre cell and its 8 neighbours: a peak one cell off still reads right
    logits, labels = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            yy, xx = (py + dy).clamp(0, h - 1), (px + dx).clamp(0, w - 1)
            logits.append(out["level"].float()[bi, :, yy, xx])
            labels.append(li)
    level = F.cross_entropy(torch.cat(logits), torch.cat(labels))
    return dict(heat=focal, offset=offset, level=level)


def training_crops(points: torch.Tensor, present: torch.Tensor, grade: torch.Tensor, per_image: int,
                   scale: float, jitter: float, fallback: float, generator: torch.Generator | None = None,
                   all_bodies: bool = False) -> tuple[torch.Tensor, ...]:
    """(image index, level, centre, axis, side) of the bodies the landmark network trains on: per
    image every fractured body, then randomly chosen normal ones, `per_image` in all (`all_bodies`:
    every body, no jitter: validation). Frames come from the truth centres as `frames` makes them
    from detected ones; then centre, side and angle are jittered by `jitter` of the spacing.
    `fallback` is the spacing assumed for a spine with a single body."""
    cen = centres_of(points).detach().cpu().numpy()
    pres, grades = present.cpu().numpy() > 0, grade.cpu().numpy()
    rows = []
    for b in range(points.shape[0]):
        lv = np.flatnonzero(pres[b])
        if len(lv) == 0:
            continue
        axis, side = frames(cen[b, lv], lv, scale, fallback)
        if all_bodies:
            pick = np.arange(len(lv))
        else:
            order = torch.randperm(len(lv), generator=generator).numpy()
            order = order[np.argsort(~(grades[b, lv][order] > 0), kind="stable")]
            pick = order[:per_image]
        rows += [(b, lv[k], *cen[b, lv[k]], *axis[k], side[k]) for k in pick]
    t = torch.tensor(rows, dtype=torch.float32).reshape(-1, 7)
    index, level, centre, axis, side = t[:, 0].long(), t[:, 1].long(), t[:, 2:4], t[:, 4:6], t[:, 6]
    if not all_bodies and jitter > 0:
        n = len(t)
        centre = centre + torch.randn(n, 2, generator=generator) * jitter * side[:, None] / scale
        side = side * torch.exp(torch.randn(n, generator=generator) * jitter)
        ang = torch.randn(n, generator=generator) * math.radians(5)
        c, s = torch.cos(ang), torch.sin(ang)
        axis = torch.stack([c * axis[:, 0] - s * axis[:, 1], s * axis[:, 0] + c * axis[:, 1]], 1)
    return index, level, centre, axis, side
