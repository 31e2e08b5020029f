"""Reading a spine with the per-vertebra model: detect bodies, name their levels, place each
body's six points, and apply the morphometry rules.

    detector heatmap peaks (3x3 local maxima above vertebra.heat_threshold)
    -> levels: the order along the spine plus the level classifier (`assign_levels`, dynamic
       programming: levels rise down the spine, a weak peak may be left out, a level may be missing)
    -> crops in frames from the detected centres (vfa.models.crops.frames), six points by the
       landmark network, then again in frames re-centred on those points (REFINE passes)
    -> heights, ratios, Genant grade and type (vfa.stats.morphometry.apply_genant_rules); P(fracture) per body
       from the landmark network's fracture head; the grade is the rules' or, with vertebra.grading
       head, the learned one (`grade_bodies`)
    -> evaluable or not: a body whose P(readable) (the landmark network's readability head, on the
       last pass's crop) is below READABLE_THRESHOLD is reported not evaluable: no grade, type or
       P(fracture), and it takes no part in the image's call.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from vfa.models.crops import crop, frames, from_crop, refine_frame
from vfa.spine import LEVELS, POINT_COLUMNS, POINTS
from vfa.stats.morphometry import apply_genant_rules

REFINE = 2          # landmark passes: the second crops around the first pass's points
MAX_PEAKS = 30
GAP = 3.0           # log-score cost of each level missing inside the column (assign_levels)
# P(readable) below which a body is not evaluable: the Bayes decision for agreement with the truth's
# `readable` when the head is calibrated (it is trained by plain BCE), not a value fitted to any data
READABLE_THRESHOLD = 0.5
ROW_COLUMNS = ("file", "level", "x0", "y0", "x1", "y1", *POINT_COLUMNS, "ha", "hm", "hp", "wedge_ratio",
                "biconcave_ratio", "crush_ratio", "height_loss", "grade", "type", "grade_source", "p_fracture",
                "evaluable", "p_readable")


def assign_levels(score: np.ndarray, level_logp: np.ndarray, gap: float = GAP) -> np.ndarray:
    """Level index (or -1: left out) of each peak, peaks in order down the spine. Maximises the sum
    of log(score) + log P(level) over kept peaks, log(1 - score) over left-out ones, and -`gap` per
    level missing between two kept ones: levels rise strictly down the spine, and a level may be
    missing at either end (the field of view) but hardly inside the column."""
    k, n = level_logp.shape
    if k == 0:
        return np.zeros(0, dtype=int)
    keep = np.log(np.clip(score, 1e-6, 1))[:, None] + level_logp           # (k, n)
    drop = np.log(np.clip(1 - score, 1e-6, 1))
    before = np.concatenate([[0.0], np.cumsum(drop)])                       # drops of peaks < i
    best = before[:-1, None] + keep                                          # peak i first kept, at level l
    back = np.full((k, n, 2), -1)
    lv = np.arange(n)
    for i in range(1, k):
        for j in range(i):
            # j kept at level m, the peaks between j and i dropped, i kept at level l > m
            between = before[i] - before[j + 1]
            cand = best[j][:, None] + between - gap * (lv[None, :] - lv[:, None] - 1) + keep[i][None, :]
            cand[lv[:, None] >= lv[None, :]] = -np.inf
            m = cand.argmax(0)
            val = cand[m, lv]
            better = val > best[i]
            best[i, better] = val[better]
            back[i, better] = np.stack([np.full(better.sum(), j), m[better]], 1)
    total = best + (before[-1] - before[1:])[:, None]                        # the peaks after i dropped
    i, lvl = np.unravel_index(int(np.argmax(total)), total.shape)
    if total[i, lvl] < before[-1]:                                           # keeping none is better
        return np.full(k, -1)
    out = np.full(k, -1)
    while i >= 0:
        out[i] = lvl
        i, lvl = back[i, lvl]
    return out


@torch.no_grad()
def detect(model, img: torch.Tensor, vcfg) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image of the batch (B, 1, H, W): (centres (N, 2) in its px, level indices (N,))."""
    H, W = img.shape[-2:]
    det_in = F.interpolate(img, size=tuple(vcfg.detector_size), mode="bilinear", antialias=True, align_corners=False)
    out = model.detector(det_in)
    heat = out["heat"].float().sigmoid()
    peaks = (heat == F.max_pool2d(heat, 3, 1, 1)) & (heat > vcfg.heat_threshold)
    stride, sx, sy = model.detector.stride, W / vcfg.detector_size[1], H / vcfg.detector_size[0]
    result = []
    for b in range(img.shape[0]):
        ys, xs = peaks[b, 0].nonzero(as_tuple=True)
        score = heat[b, 0, ys, xs]
        top = score.argsort(descending=True)[:MAX_PEAKS]
        ys, xs, score = ys[top], xs[top], score[top]
        off = out["offset"].float()[b, :, ys, xs]
        cx, cy = (xs.float() + off[0]) * stride * sx, (ys.float() + off[1]) * stride * sy
        order = cy.argsort()
        logp = out["level"].float()[b, :, ys, xs].T.log_softmax(-1)[order].cpu().numpy()
        lv = assign_levels(score[order].cpu().numpy(), logp)
        kept = lv >= 0
        centres = torch.stack([cx[order], cy[order]], 1).cpu().numpy()[kept]
        result.append((centres, lv[kept]))
    return result


@torch.no_grad()
def place_points(model, img: torch.Tensor, found, vcfg) -> list[tuple[np.ndarray, ...]]:
    """Per image: (six points (N, 6, 2) in its px, P(fracture) (N,), P(readable) (N,), P(grade >= 2)
    and P(grade >= 3) given fractured (N, 2)) of the detected bodies. A landmark network without a
    readability or severity output reads P(readable) 1 and severity 0."""
    index, centre, axis, side = [], [], [], []
    for b, (c, lv) in enumerate(found):
        if len(c):
            a, s = frames(c, lv, vcfg.crop_scale, fallback=img.shape[-2] / 16)
            index += [b] * len(c)
            centre.append(c), axis.append(a), side.append(s)
    if not index:
        return [(np.zeros((0, 6, 2)), np.zeros(0), np.zeros(0), np.zeros((0, 2))) for _ in found]
    dev = img.device
    index = torch.tensor(index, device=dev)
    centre, axis, side = (torch.tensor(np.concatenate(v), dtype=torch.float32, device=dev)
                          for v in (centre, axis, side))
    for _ in range(REFINE):
        q, logit, *rest = model.landmarks(crop(img, index, centre, axis, side, vcfg.crop_size))
        pts = from_crop(q.float(), centre, axis, side)
        centre, axis = refine_frame(pts)
    prob = (logit.float() - prior_shift(model, vcfg)).sigmoid().cpu().numpy()
    readable = rest[0].float().sigmoid().cpu().numpy() if rest else np.ones(len(prob))
    severity = rest[1].float().sigmoid().cpu().numpy() if len(rest) > 1 else np.zeros((len(prob), 2))
    pts, out, start = pts.cpu().numpy(), [], 0
    for c, _ in found:
        part = slice(start, start + len(c))
        out.append((pts[part], prob[part], readable[part], severity[part]))
        start += len(c)
    return out


def prior_shift(model, vcfg) -> float:
    """What the fracture logit is lowered by before its sigmoid: log(pos_weight) with
    vertebra.fracture_prior `training` (a head trained with the positive class weighted w reads odds w
    times the training set's; a model without a stored weight: w = 1), else 0."""
    if vcfg.fracture_prior != "training":
        return 0.0
    return math.log(max(float(getattr(model, "pos_weight", 1.0)), 1e-6))


def spine_rows(file: str, points: np.ndarray, levels: np.ndarray, prob: np.ndarray,
               fracture_threshold: float = 0.5, readable: np.ndarray | None = None,
               severity: np.ndarray | None = None, grading: str = "rules") -> pd.DataFrame:
    """The vertebrae.csv rows of one image (points in its own px); `grading` says who grades
    (`grade_bodies`), `grade_source` which made each call, and the shape is the rules' lowest ratio.
    `readable`: P(readable) per body (None: 1); a body below READABLE_THRESHOLD is not evaluable
    (`evaluable` 0): its grade, type, grade_source and p_fracture are empty (its points and heights
    stay: they say where the level is, not what it shows)."""
    if len(points) == 0:
        return pd.DataFrame(columns=list(ROW_COLUMNS))
    readable = np.ones(len(points)) if readable is None else np.asarray(readable, dtype=float)
    ok = readable >= READABLE_THRESHOLD
    r = apply_genant_rules(points, [LEVELS[i] for i in levels])
    grade, source = grade_bodies(r["grade"], prob, fracture_threshold, severity, grading)
    frame = pd.DataFrame({"file": file, "level": [LEVELS[i] for i in levels],
                          "x0": points[..., 0].min(1), "y0": points[..., 1].min(1),
                          "x1": points[..., 0].max(1), "y1": points[..., 1].max(1)})
    for j, name in enumerate(POINTS):
        frame[f"{name}_x"], frame[f"{name}_y"] = points[:, j, 0], points[:, j, 1]
    for key in ("ha", "hm", "hp", "wedge_ratio", "biconcave_ratio", "crush_ratio", "height_loss"):
        frame[key] = r[key]
    frame["grade"] = pd.array(np.where(ok, grade, 0), dtype="Int64")   # Int64: an empty grade stays empty
    frame.loc[~ok, "grade"] = pd.NA
    frame["type"] = np.where(~ok, "", np.where(grade > 0, r["shape"], "normal"))
    frame["grade_source"] = np.where(~ok, "", source)
    frame["p_fracture"] = np.where(ok, prob, np.nan)
    frame["evaluable"], frame["p_readable"] = ok.astype(int), readable
    return frame[list(ROW_COLUMNS)]


def grade_bodies(rules_grade: np.ndarray, prob: np.ndarray, threshold: float, severity: np.ndarray | None,
                 grading: str) -> tuple[np.ndarray, np.ndarray]:
    """(grade, grade_source) per body. `rules`: a body is fractured when the rules grade it >= 1 on
    its predicted points or the fracture head's P reaches `threshold`; the grade is the rules' (1 for
    a body only the head calls, source `head`). `head`, the learned grade: fractured when the fracture
    head's P (= P(grade >= 1)) reaches `threshold`, and then 1, plus 1 for each of the severity head's
    P(grade >= 2 | fractured), P(grade >= 3 | fractured) that reaches 0.5 in turn (source `head`)."""
    prob = np.asarray(prob, dtype=float)
    if grading == "head":
        sev = np.zeros((len(prob), 2)) if severity is None else np.asarray(severity, dtype=float)
        two = sev[:, 0] >= 0.5
        grade = np.where(prob >= threshold, 1 + two + (two & (sev[:, 1] >= 0.5)), 0)
        return grade, np.full(len(prob), "head")
    head_only = (rules_grade == 0) & (prob >= threshold)
    return np.where(head_only, 1, rules_grade), np.where(head_only, "head", "rules")


def read_spines(model, paths: list[str], batch_size: int = 8, progress: bool = False) -> list[pd.DataFrame]:
    """vertebrae.csv rows (`file` = the path as given) of each image, points in the file's pixels.
    A right-facing spine (vfa.inference.orientation) is read mirrored and its points mirrored back."""
    from vfa.data.transforms import create_transform
    from vfa.inference.orientation import facing, mirror_points

    transform = create_transform(model.config, channels=1)
    dev, vcfg = next(model.parameters()).device, model.config.vertebra
    out = []
    starts = range(0, len(paths), batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="vertebrae", unit="batch")
    for s in starts:
        batch = paths[s:s + batch_size]
        loaded = [transform.load_scaled(p) for p in batch]
        img = torch.stack([x for x, _ in loaded]).to(dev)
        sides = facing(model, batch, img, vcfg, detect)
        right = torch.tensor([f == "right" for f in sides], device=dev)
        img = torch.where(right[:, None, None, None], img.flip(-1), img)
        found = detect(model, img, vcfg)
        for path, (_, scale), (c, lv), (pts, prob, ok, sev), side in zip(
                batch, loaded, found, place_points(model, img, found, vcfg), sides):
            if side == "right":   # back to the image as given: its anterior points stay anterior
                pts = mirror_points(pts, img.shape[-1])
            out.append(spine_rows(path, pts / scale.numpy(), lv, prob, vcfg.fracture_threshold, ok, sev,
                                  vcfg.grading))
    return out


def evaluable_mask(vert: pd.DataFrame) -> np.ndarray:
    """Which bodies were read (True), from `evaluable` (a table without it: every body)."""
    if "evaluable" not in vert:
        return np.ones(len(vert), dtype=bool)
    return pd.to_numeric(vert["evaluable"], errors="coerce").fillna(1).to_numpy() > 0


def grades_of(vert: pd.DataFrame) -> np.ndarray:
    """The `grade` column as floats, NaN where it is empty (a body not evaluable)."""
    return pd.to_numeric(vert["grade"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def body_scores(vert: pd.DataFrame, threshold: float) -> np.ndarray:
    """Each body's call as a score in [0, 1] that reaches `threshold` exactly when the body is called
    fractured: P(fracture) of the head for a body the rules leave at grade 0, and threshold +
    (1 - threshold) P for a body the rules grade (so a rules call is never outranked by a lower head P).
    A body not evaluable scores 0: what cannot be read does not make the image fractured."""
    p = pd.to_numeric(vert["p_fracture"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    rules = (np.nan_to_num(grades_of(vert)) > 0) & (vert["grade_source"].to_numpy() == "rules")
    return np.where(evaluable_mask(vert), np.nan_to_num(np.where(rules, threshold + (1 - threshold) * p, p)), 0.0)


def image_rows(spines: list[pd.DataFrame], threshold: float) -> pd.DataFrame:
    """The image-level columns (vfa.registry.IMAGE_COLUMNS' raw and predicted, then the family's
    extras) from each image's bodies: raw = its highest body score (`body_scores`; 0 when no body
    was found), so predicted = raw >= threshold says exactly "a body is fractured" (max_grade >= 1,
    over the evaluable bodies; 0 when none is)."""
    raw = np.array([float(body_scores(v, threshold).max()) if len(v) else 0.0 for v in spines])
    grades = [np.nan_to_num(grades_of(v)) for v in spines]
    return pd.DataFrame({"raw": raw, "predicted": (raw >= threshold).astype(int),
                         "max_grade": [int(g.max()) if len(g) else 0 for g in grades],
                         "n_vertebrae": [len(v) for v in spines]})
