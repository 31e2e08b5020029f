"""Per-vertebra metrics against a per-vertebra truth table. A share of bodies (recall, Sn, Sp, ...)
has a Wilson CI, with the bootstrap over images beside it; every other metric a bootstrap over images
(the bodies of one spine are not independent, so images are what is resampled). See `bootstrap`.

Each true body is matched to at most one predicted body (Hungarian assignment on box IoU, kept
at IoU >= 0.5). A body the model missed counts as read normal (grade 0, P 0) in the fracture
metrics, so a miss costs sensitivity instead of leaving the average.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from vfa.stats.accuracy import delong_ci, wilson
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


def _proportions(b: pd.DataFrame) -> dict[str, pd.Series]:
    """The metrics that are a share of bodies: {metric: one bool per body it counts} (numerator: True)."""
    f = b[b["found"]]
    true_frac, called = b["grade"] > 0, b["pred_grade"] > 0
    both = f[(f["grade"] > 0) & (f["pred_grade"] > 0)]
    out = {"detection_recall": b["found"].astype(bool), "level_accuracy": f["level"] == f["pred_level"],
           "sensitivity": called[true_frac], "specificity": ~called[~true_frac],
           "shape_accuracy": both["type"] == both["pred_type"]}
    for grade in (1, 2, 3):
        out[f"sensitivity_grade{grade}"] = called[b["grade"] == grade]
    return out


PROPORTIONS = ("detection_recall", "level_accuracy", "sensitivity", "specificity", "shape_accuracy",
               "sensitivity_grade1", "sensitivity_grade2", "sensitivity_grade3")


def scalars(b: pd.DataFrame) -> dict[str, float]:
    """The headline numbers of matched bodies `b` (match_image rows of any set of images)."""
    f = b[b["found"]]
    true_frac = b["grade"] > 0
    ratio_err = np.abs(f[list(RATIOS)].to_numpy(dtype=float) - f[[f"true_{k}" for k in RATIOS]].to_numpy(dtype=float))
    out = {key: _mean(v) for key, v in _proportions(b).items()}
    out.update({"point_error": _mean(f["point_error"]), "ratio_error": _mean(ratio_err.mean(1)) if len(f) else np.nan})
    for k, key in enumerate(RATIOS):
        out[f"{key}_error"] = _mean(ratio_err[:, k]) if len(f) else np.nan
    g, pg = b["grade"].to_numpy(dtype=int), b["pred_grade"].to_numpy(dtype=int)
    out["grade_kappa"] = float(cohen_kappa_score(g, pg, weights="linear", labels=[0, 1, 2, 3])) \
        if len(set(g) | set(pg)) > 1 else np.nan
    y = true_frac.to_numpy()
    out["auc"] = float(roc_auc_score(y, b["p_fracture"])) if 0 < y.sum() < len(y) else np.nan
    return out


def bootstrap(bodies: pd.DataFrame, n: int = 300, seed: int = 0, alpha: float = 0.05) -> dict[str, dict]:
    """{metric: {value, ci: [lo, hi], method}} and "n" (counts).

    A share of bodies (PROPORTIONS) gets the Wilson interval of k/n (method "wilson", with k and n):
    it treats the bodies as independent, so it is narrower than a cluster-aware interval, but it
    never collapses to a point at 0 or 1 as a bootstrap does (74/74 gives 0.951-1.000, not
    1.000-1.000). Its percentile bootstrap over `n` resamples of the images (the bodies of one spine
    are not independent, so images are what is resampled) is kept as ci_images, the clustered view,
    or None where it is degenerate (every resample gives the same value). Every other metric (kappa,
    AUC, the errors) has that bootstrap as its ci (method "bootstrap"), degenerate: True where it is
    a single point."""
    point = scalars(bodies)
    groups = [g.index.to_numpy() for _, g in bodies.groupby("image")]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        pick = rng.integers(0, len(groups), len(groups))
        draws.append(scalars(bodies.loc[np.concatenate([groups[i] for i in pick])]))
    shares = _proportions(bodies)
    out = {}
    for key, value in point.items():
        d = np.array([x[key] for x in draws], dtype=float)
        d = d[~np.isnan(d)]
        ci = [float(np.quantile(d, alpha / 2)), float(np.quantile(d, 1 - alpha / 2))] if len(d) else [np.nan, np.nan]
        degenerate = bool(len(d)) and ci[0] == ci[1]
        if key in shares:
            k, m = int(shares[key].sum()), len(shares[key])
            out[key] = {"value": value, "ci": list(wilson(k, m, alpha)), "method": "wilson", "k": k, "n": m,
                        "ci_images": None if degenerate or not len(d) else ci}
        else:
            out[key] = {"value": value, "ci": ci, "method": "bootstrap", "degenerate": degenerate}
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


def goal_met(value: float, goal: str) -> bool | None:
    """Whether the point value meets a goal such as ">= 0.98" or "<= 0.03"; None without a goal or value."""
    if not goal or value is None or np.isnan(value):
        return None
    op, bound = goal.split()
    return value >= float(bound) if op == ">=" else value <= float(bound)


def _f(x) -> str:
    return "n/a" if x is None or np.isnan(x) else f"{x:.3f}"


def _ci(ci) -> str:
    return "n/a" if any(x is None or np.isnan(x) for x in ci) else f"{ci[0]:.3f}-{ci[1]:.3f}"


def table_rows(m: dict, image: dict | None = None) -> list[dict]:
    """One row per metric: {metric, value, ci, method, goal, met} as text (met: True, False or None)."""
    rows = []
    for label, key, goal in TABLE:
        v = m[key]
        value = _f(v["value"])
        if v.get("method") == "wilson":
            value += f" ({v['k']}/{v['n']})"
            images = v["ci_images"]
            method = ("Wilson; over images " + (_ci(images) if images else "degenerate")) if v["n"] else \
                "no body to count"
        else:
            method = "bootstrap over images" + (" (degenerate)" if v.get("degenerate") else "")
        rows.append({"metric": label, "value": value, "ci": _ci(v["ci"]), "method": method, "goal": goal,
                     "met": goal_met(v["value"], goal)})
    if image:
        rows.append({"metric": "Image-level AUC (max over bodies)", "value": _f(image["auc"]), "ci": _ci(image["ci"]),
                     "method": "DeLong", "goal": ">= cpu-demo's", "met": None})
    return rows


def table_lines(m: dict, image: dict | None = None) -> list[str]:
    """The metrics as a Markdown table (value, 95 % CI, how the CI was made, goal; a goal that is not
    met says so)."""
    lines = ["| metric | value | 95 % CI | CI | goal |", "|---|---|---|---|---|"]
    for r in table_rows(m, image):
        goal = r["goal"] + (" **not met**" if r["met"] is False else "")
        lines.append(f"| {r['metric']} | {r['value']} | {r['ci']} | {r['method']} | {goal} |")
    return lines


CI_NOTE = ("95 % CIs. A share of bodies (k/n) has a Wilson interval, which treats the bodies as independent: "
           "the bodies of one spine are not, so it is narrower than a cluster-aware interval would be. Beside it, "
           "'over images' is the percentile bootstrap over images (cluster-aware), or 'degenerate' where every "
           "resample gives the same value (k = n or 0: the bootstrap collapses to a point and says nothing). "
           "Kappa, AUC and the errors: the bootstrap over images. Image AUC: DeLong. A goal is met by the point value.")


def describe_image(rows: pd.DataFrame, n_read: int) -> str:
    """A caption of one image's reading against its truth (its match_image rows; n_read: bodies the
    model read): misses, wrong levels, fracture calls that disagree, bodies read where none is."""
    found = rows["found"].astype(bool)
    parts = []
    missed = rows[~found]
    if len(missed):
        names = [r.level + (f" (fractured, grade {r.grade})" if r.grade > 0 else "") for r in missed.itertuples()]
        parts.append(f"missed {len(missed)} of {len(rows)}: " + ", ".join(names))
    wrong = rows[found & (rows["level"] != rows["pred_level"])]
    if len(wrong):
        parts.append("wrong level: " + ", ".join(f"{r.level} labelled {r.pred_level}" for r in wrong.itertuples()))
    not_called = rows[found & (rows["grade"] > 0) & (rows["pred_grade"] == 0)]
    if len(not_called):
        parts.append("fracture not called: " + ", ".join(f"{r.level} (grade {r.grade})"
                                                         for r in not_called.itertuples()))
    over = rows[found & (rows["grade"] == 0) & (rows["pred_grade"] > 0)]
    if len(over):
        parts.append("called fractured, normal in the truth: " + ", ".join(
            f"{r.level} (read grade {r.pred_grade})" for r in over.itertuples()))
    extra = n_read - int(found.sum())
    if extra > 0:
        parts.append(f"{extra} body read where the truth has none" if extra == 1 else
                     f"{extra} bodies read where the truth has none")
    return "; ".join(parts) if parts else "every body found, at its level, and its fracture call as the truth's"
