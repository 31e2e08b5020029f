"""Rotated, scaled crops of one vertebra each, and the maps between image and crop coordinates.

A body's frame is its centre, its axis (the unit vector along the spine, pointing caudally) and a
side length. The frames of one spine come from its centres alone (`frames`), the same way whether
the centres are the truth (training) or the detector's (inference), so the landmark network sees
at inference the crops it learned on. Image coordinates are pixels with the origin at the image's
top-left corner (the first pixel's centre is at 0.5, 0.5), as DICOM spatial coordinates are.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def frames(centres: np.ndarray, levels: np.ndarray, scale: float, fallback: float) -> tuple[np.ndarray, np.ndarray]:
    """(axis (N, 2), side (N,)) for one spine's bodies: `centres` (N, 2) with their level numbers.
    The axis is the direction to the next body minus that to the previous; the side is `scale`
    times the spine's median centre distance per level (robust to a missed body); `fallback` is the
    spacing used when there is a single body."""
    c, lv = np.asarray(centres, dtype=float), np.asarray(levels, dtype=float)
    order = np.argsort(lv)
    c, lv = c[order], lv[order]
    n = len(c)
    if n < 2:
        axis, spacing = np.tile([0.0, 1.0], (n, 1)), fallback
    else:
        step = np.diff(c, axis=0) / np.maximum(np.diff(lv), 1)[:, None]
        spacing = float(np.median(np.linalg.norm(step, axis=1)))
        fwd = np.vstack([step, step[-1:]])
        back = np.vstack([step[:1], step])
        axis = fwd + back
        axis /= np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-6)
    out_axis, out_side = np.empty((n, 2)), np.full(n, scale * spacing)
    out_axis[order] = axis
    return out_axis, out_side


def _across(axis: torch.Tensor) -> torch.Tensor:
    """The unit vector across the body, + towards the posterior wall when the axis points down an
    image whose spine faces left (the phantom's and the common VFA orientation; a right-facing scan
    is mirrored before it is read: vfa.inference.orientation)."""
    return torch.stack([axis[..., 1], -axis[..., 0]], -1)


def crop(images: torch.Tensor, index: torch.Tensor, centre: torch.Tensor, axis: torch.Tensor, side: torch.Tensor,
         size: int) -> torch.Tensor:
    """(M, C, size, size) crops of `images` (B, C, H, W): crop m from image index[m], centred at
    centre[m] (image px), its rows along axis[m], side[m] px wide; bilinear, zeros outside."""
    _, _, H, W = images.shape
    half = side[:, None] / 2
    ex, ey = _across(axis) * half, axis * half
    scale = torch.tensor([2.0 / W, 2.0 / H], device=images.device, dtype=centre.dtype)
    theta = torch.stack([ex * scale, ey * scale, centre * scale - 1], dim=2)      # (M, 2, 3)
    grid = F.affine_grid(theta.to(images.dtype), [len(index), images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images[index], grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def to_crop(points: torch.Tensor, centre: torch.Tensor, axis: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """(M, K, 2) image px -> crop coordinates in [-0.5, 0.5] (x across the body, y along the axis)."""
    d = points - centre[:, None]
    return torch.stack([(d * _across(axis)[:, None]).sum(-1), (d * axis[:, None]).sum(-1)], -1) / side[:, None, None]


def from_crop(q: torch.Tensor, centre: torch.Tensor, axis: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """The inverse of to_crop."""
    q = q * side[:, None, None]
    return centre[:, None] + q[..., :1] * _across(axis)[:, None] + q[..., 1:] * axis[:, None]


def refine_frame(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre, axis) of bodies from their six predicted points (M, 6, 2): the points' mean, and
    the mean direction from the superior to the inferior end plate."""
    axis = (points[:, 3:] - points[:, :3]).mean(1)
    return points.mean(1), axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-6)
