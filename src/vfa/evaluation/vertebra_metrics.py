"""Per-vertebra metrics against a per-vertebra truth table, with CIs from a bootstrap over images
(the bodies of one spine are not independent, so images are what is resampled).

Each true body is matched to at most one predicted body (Hungarian assignment on box IoU, kept
at IoU >= 0.5). A body the model missed counts as read normal (grade 0, P 0) in the fracture
metrics, so a miss costs sensitivity instead of leaving the average.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from vfa.stats.accuracy import delong_ci
from vfa.stats.morphometry import POINT_COLUMNS, apply_genant_rules

IOU = 0.5
RATIOS = ("wedge_ratio", "biconcave_ratio", "crush_ratio")


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4) x (m, 4) boxes [x0, y0, x1, y1] -> (n, m) IoU."""
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    # the floor only guards empty boxes: an epsilon added to every union would put IoU 0.5 below IOU
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def _points(rows: pd.DataFrame) -> np.ndarray:
    return rows[list(POINT_COLUMNS)].to_numpy(dtype=float).reshape(-1, 6, 2)


def match_image(image: int, truth: pd.DataFrame, pred: pd.DataFrame) -> pd.DataFrame:
    """One row per true body of one image: whether it was found and how it was read."""
    tp = _points(truth)
    t = apply_genant_rules(tp, list(truth["level"]))
    boxes = np.concatenate([tp.min(1), tp.max(1)], 1)
    out = pd.DataFrame({"image": image, "level": truth["level"].to_numpy(),
                        "grade": truth["grade"].to_numpy() if "grade" in truth else t["grade"],
                        "type": truth["type"].to_numpy() if "type" in truth else t["type"],
                        "height": np.stack([t["ha"], t["hm"], t["hp"]], 1).max(1)})
    for key in RATIOS:
        out[f"true_{key}"] = t[key]
    out["found"], out["pred_level"], out["pred_grade"], out["pred_type"] = False, "", 0, "normal"
    out["p_fracture"], out["point_error"] = 0.0, np.nan
    for key in RATIOS:
        out[key] = np.nan
    if len(pred) == 0 or len(truth) == 0:
        return out
    iou = _iou(boxes, pred[["x0", "y0", "x1", "y1"]].to_numpy(dtype=float))
    ti, pi = linear_sum_assignment(-iou)
    keep = iou[ti, pi] >= IOU
    ti, pi = ti[keep], pi[keep]
    pp = _points(pred)
    col = out.columns.get_loc
    out.iloc[ti, col("found")] = True
    out.iloc[ti, col("pred_level")] = pred["level"].to_numpy()[pi]
    out.iloc[ti, col("pred_grade")] = pred["grade"].to_numpy()[pi].astype(int)
    out.iloc[ti, col("pred_type")] = pred["type"].to_numpy()[pi]
    out.iloc[ti, col("p_fracture")] = pred["p_fracture"].to_numpy(dtype=float)[pi]
    out.iloc[ti, col("point_error")] = np.linalg.norm(pp[pi] - tp[ti], axis=2).mean(1) / out["height"].to_numpy()[ti]
    for key in RATIOS:
        out.iloc[ti, col(key)] = pred[key].to_numpy(dtype=float)[pi]
    return out


def _mean(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.nanmean(x)) if len(x) and not np.isnan(x).all() else float("nan")


def scalars(b: pd.DataFrame) -> dict[str, float]:
    """The headline numbers of matched bodies `b` (match_image rows of any set of images)."""
    f = b[b["found"]]
    true_frac, called = b["grade"] > 0, b["pred_grade"] > 0
    ratio_err = np.abs(f[list(RATIOS)].to_numpy(dtype=float) - f[[f"true_{k}" for k in RATIOS]].to_numpy(dtype=float))
    out = {"detection_recall": _mean(b["found"]), "level_accuracy": _mean(f["level"] == f["pred_level"]),
           "point_error": _mean(f["point_error"]), "ratio_error": _mean(ratio_err.mean(1)) if len(f) else np.nan,
           "sensitivity": _mean(called[true_frac]), "specificity": _mean(~called[~true_frac])}
    for k, key in enumerate(RATIOS):
        out[f"{key}_error"] = _mean(ratio_err[:, k]) if len(f) else np.nan
    both = f[(f["grade"] > 0) & (f["pred_grade"] > 0)]
    out["shape_accuracy"] = _mean(both["type"] == both["pred_type"])
    g, pg = b["grade"].to_numpy(dtype=int), b["pred_grade"].to_numpy(dtype=int)
    out["grade_kappa"] = float(cohen_kappa_score(g, pg, weights="linear", labels=[0, 1, 2, 3])) \
        if len(set(g) | set(pg)) > 1 else np.nan
    y = true_frac.to_numpy()
    out["auc"] = float(roc_auc_score(y, b["p_fracture"])) if 0 < y.sum() < len(y) else np.nan
    for grade in (1, 2, 3):
        out[f"sensitivity_grade{grade}"] = _mean(called[b["grade"] == grade])
    return out


def bootstrap(bodies: pd.DataFrame, n: int = 300, seed: int = 0, alpha: float = 0.05) -> dict[str, dict]:
    """{metric: {value, ci: [lo, hi], n}}: percentile CIs over `n` resamples of the images."""
    point = scalars(bodies)
    groups = [g.index.to_numpy() for _, g in bodies.groupby("image")]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        pick = rng.integers(0, len(groups), len(groups))
        draws.append(scalars(bodies.loc[np.concatenate([groups[i] for i in pick])]))
    out = {}
    for key, value in point.items():
        d = np.array([x[key] for x in draws], dtype=float)
        d = d[~np.isnan(d)]
        ci = [float(np.quantile(d, alpha / 2)), float(np.quantile(d, 1 - alpha / 2))] if len(d) else [np.nan, np.nan]
        out[key] = {"value": value, "ci": ci}
    counts = {"images": len(groups), "vertebrae": len(bodies), "fractured": int((bodies["grade"] > 0).sum())}
    counts.update({f"grade{g}": int((bodies["grade"] == g).sum()) for g in (1, 2, 3)})
    out["n"] = counts
    return out


def image_auc(labels, p) -> dict:
    """The image-level AUC of the per-vertebra reading (P = its most likely fractured body), DeLong CI."""
    d = delong_ci(np.asarray(labels, dtype=int), np.asarray(p, dtype=float))
    return {"auc": d["auc"], "ci": list(d["auc_ci"])}


TABLE = (("Detection recall (IoU >= 0.5)", "detection_recall", ">= 0.98"),
         ("Level accuracy (found bodies)", "level_accuracy", ">= 0.95"),
         ("Point error (share of body height)", "point_error", "<= 0.03"),
         ("Height-ratio error (mean abs.)", "ratio_error", "<= 0.03"),
         ("Fracture sensitivity (grade >= 1)", "sensitivity", ">= 0.93"),
         ("Fracture specificity", "specificity", ">= 0.95"),
         ("Grade agreement (linear kappa)", "grade_kappa", ">= 0.80"),
         ("Shape accuracy (fractures called)", "shape_accuracy", ">= 0.85"),
         ("Sensitivity, grade 1 (mild)", "sensitivity_grade1", ""),
         ("Sensitivity, grade 2 (moderate)", "sensitivity_grade2", ""),
         ("Sensitivity, grade 3 (severe)", "sensitivity_grade3", ""),
         ("Per-vertebra AUC of P(fracture)", "auc", ""))


def table_lines(m: dict, image: dict | None = None) -> list[str]:
    """The metrics as a Markdown table (value, 95 % CI, goal)."""
    lines = ["| metric | value | 95 % CI | goal |", "|---|---|---|---|"]
    for label, key, goal in TABLE:
        v = m[key]
        lines.append(f"| {label} | {v['value']:.3f} | {v['ci'][0]:.3f}-{v['ci'][1]:.3f} | {goal} |")
    if image:
        lines.append(f"| Image-level AUC (max over bodies) | {image['auc']:.3f} | {image['ci'][0]:.3f}-"
                     f"{image['ci'][1]:.3f} | >= cpu-demo's |")
    return lines


