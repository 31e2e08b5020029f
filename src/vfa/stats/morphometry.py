"""Quantitative vertebral morphometry and Genant's semiquantitative rules, torch-free.

A body's six points (superior and inferior end plates at the anterior wall, the middle and the
posterior wall) give its anterior, middle and posterior heights ha, hm, hp. Three ratios compare them:

    wedge      ha / hp      anterior collapse (posterior wall intact)
    biconcave  hm / hp      central end-plate depression
    crush      hp / ref     the whole body lower than expected: `ref` is the posterior height its
                            neighbours predict (reference_heights)

Height loss is 1 - the smallest ratio (0 when none is below 1); Genant's grade follows from it
(GRADE_CUTS: < 20 % normal, 20-25 % mild, 25-40 % moderate, > 40 % severe) and the type is the
ratio that gave it. These are the rules a reader applies by eye and that morphometry software applies
to the six points; vfa applies them to the points its model predicts (docs/vertebrae.md).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

# this module's vocabulary
from vfa.spine import FRACTURE_SHAPES, LEVELS, POINT_COLUMNS, POINTS, SHAPES  # noqa: F401

GRADE_CUTS = (0.20, 0.25, 0.40)           # height loss at which grades 1, 2 and 3 begin
NEIGHBOURS = 2                            # levels each side that predict a body's reference height


def heights(points) -> np.ndarray:
    """(N, 6, 2) points in POINTS order -> (N, 3) anterior, middle, posterior heights (Euclidean
    distance between the end plates at each wall)."""
    p = np.asarray(points, dtype=float).reshape(-1, 6, 2)
    return np.linalg.norm(p[:, 3:] - p[:, :3], axis=2)


def reference_heights(hp, levels) -> np.ndarray:
    """The posterior height each body's neighbours predict: bodies grow from T4 to L4, so log(hp)
    is detrended over the level number (Theil-Sen, robust to the fractured few), and each body's
    reference is the trend at its level plus the median residual of the bodies within NEIGHBOURS
    levels of it (itself excluded). A body without a neighbour is its own reference."""
    hp = np.asarray(hp, dtype=float)
    idx = np.array([LEVELS.index(lv) for lv in levels], dtype=float)
    if len(hp) < 3:
        return hp.copy()
    slope, intercept, *_ = stats.theilslopes(np.log(hp), idx)
    trend = intercept + slope * idx
    resid = np.log(hp) - trend
    ref = hp.copy()
    for i in range(len(hp)):
        near = (np.abs(idx - idx[i]) <= NEIGHBOURS) & (idx != idx[i])
        if near.any():
            ref[i] = np.exp(trend[i] + np.median(resid[near]))
    return ref


def ratios(ha, hm, hp, ref) -> np.ndarray:
    """(N, 3) wedge, biconcave and crush ratios (FRACTURE_SHAPES order)."""
    ha, hm, hp, ref = (np.asarray(a, dtype=float) for a in (ha, hm, hp, ref))
    return np.stack([ha / hp, hm / hp, hp / ref], axis=1)


def grade_of(loss) -> np.ndarray:
    """Genant grade (0-3) of each height loss (a fraction)."""
    return np.searchsorted(np.asarray(GRADE_CUTS), np.asarray(loss, dtype=float), side="right")


def apply_genant_rules(points, levels) -> dict[str, np.ndarray]:
    """Apply Genant's rules to one spine's bodies: `points` (N, 6, 2) and their `levels`. Returns
    heights, reference, ratios, height_loss, grade, type ('normal' for grade 0) and shape (the
    lowest ratio's type, whatever the grade) per body."""
    h = heights(points)
    ref = reference_heights(h[:, 2], levels)
    r = ratios(h[:, 0], h[:, 1], h[:, 2], ref)
    loss = np.clip(1 - r.min(axis=1), 0, 1)
    grade = grade_of(loss)
    shape = np.asarray(FRACTURE_SHAPES)[r.argmin(axis=1)]
    return dict(ha=h[:, 0], hm=h[:, 1], hp=h[:, 2], ref=ref, wedge_ratio=r[:, 0], biconcave_ratio=r[:, 1],
                crush_ratio=r[:, 2], height_loss=loss, grade=grade, type=np.where(grade > 0, shape, "normal"),
                shape=shape)
