"""Per-vertebra metrics against a per-vertebra truth table. A share of bodies (recall, Sn, Sp, ...)
has a Wilson CI, with the bootstrap over images beside it; every other metric a bootstrap over images
(the bodies of one spine are not independent, so images are what is resampled). See `bootstrap`.

Each true body is matched to at most one predicted body (Hungarian assignment on box IoU, kept
at IoU >= 0.5). A body the model missed counts as read normal (grade 0, P 0) in the fracture
metrics, so a miss costs sensitivity instead of leaving the average.

Where the truth has `readable`, only the bodies it marks readable (1 or empty) are scored; a body the
reader calls not evaluable leaves the fracture and grade metrics (it is counted in `not_evaluable`),
and `readable_agreement` is the share of found bodies whose evaluable call equals the truth's
`readable`. `breakdown` splits Sn and Sp by vendor, truth grade, level band and mimic kind.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from vfa.data.vertebrae import readable_of
from vfa.inference.vertebra import evaluable_mask, grades_of
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
    out["readable"] = readable_of(truth)
    if "mimic" in truth:
        out["mimic"] = truth["mimic"].to_numpy()
    for key in RATIOS:
        out[f"true_{key}"] = t[key]
    out["found"], out["pred_level"], out["pred_grade"], out["pred_type"] = False, "", 0, "normal"
    out["pred_evaluable"] = True   # a missed body is read normal, as before `evaluable` existed
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
    ok = evaluable_mask(pred)[pi]
    out.iloc[ti, col("pred_evaluable")] = ok
    out.iloc[ti, col("pred_grade")] = np.nan_to_num(grades_of(pred)[pi]).astype(int)   # 0 where n/e (left out)
    out.iloc[ti, col("pred_type")] = np.where(ok, pred["type"].to_numpy()[pi], "")
    out.iloc[ti, col("p_fracture")] = np.nan_to_num(pd.to_numeric(pred["p_fracture"], errors="coerce")
                                                    .to_numpy(dtype=float)[pi])
    out.iloc[ti, col("point_error")] = np.linalg.norm(pp[pi] - tp[ti], axis=2).mean(1) / out["height"].to_numpy()[ti]
    for key in RATIOS:
        out.iloc[ti, col(key)] = pred[key].to_numpy(dtype=float)[pi]
    return out


def _mean(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.nanmean(x)) if len(x) and not np.isnan(x).all() else float("nan")


def scored(b: pd.DataFrame) -> pd.DataFrame:
    """The bodies that are scored: those the truth does not mark unreadable (readable 1 or not said)."""
    return b[~(b["readable"] == 0)] if "readable" in b else b


def _proportions(b: pd.DataFrame) -> dict[str, pd.Series]:
    """The metrics that are a share of bodies: {metric: one bool per body it counts} (numerator: True).
    Detection and levels count the scored bodies; fracture calls the scored bodies read evaluable."""
    r = scored(b)
    f = r[r["found"]]
    c = r[r["pred_evaluable"].astype(bool)] if "pred_evaluable" in r else r
    true_frac, called = c["grade"] > 0, c["pred_grade"] > 0
    both = c[c["found"] & (c["grade"] > 0) & (c["pred_grade"] > 0)]
    out = {"detection_recall": r["found"].astype(bool), "level_accuracy": f["level"] == f["pred_level"],
           "sensitivity": called[true_frac], "specificity": ~called[~true_frac],
           "shape_accuracy": both["type"] == both["pred_type"]}
    for grade in (1, 2, 3):
        out[f"sensitivity_grade{grade}"] = called[c["grade"] == grade]
    if "pred_evaluable" in b:
        said = b[b["found"] & b["readable"].notna()] if "readable" in b else b.iloc[:0]
        out["readable_agreement"] = said["pred_evaluable"].astype(bool) == (said["readable"] == 1)
        out["not_evaluable"] = ~f["pred_evaluable"].astype(bool)
    return out


PROPORTIONS = ("detection_recall", "level_accuracy", "sensitivity", "specificity", "shape_accuracy",
               "sensitivity_grade1", "sensitivity_grade2", "sensitivity_grade3", "readable_agreement",
               "not_evaluable")


def scalars(b: pd.DataFrame) -> dict[str, float]:
    """The headline numbers of matched bodies `b` (match_image rows of any set of images)."""
    r = scored(b)
    f = r[r["found"]]
    c = r[r["pred_evaluable"].astype(bool)] if "pred_evaluable" in r else r
    ratio_err = np.abs(f[list(RATIOS)].to_numpy(dtype=float) - f[[f"true_{k}" for k in RATIOS]].to_numpy(dtype=float))
    out = {key: _mean(v) for key, v in _proportions(b).items()}
    out.update({"point_error": _mean(f["point_error"]), "ratio_error": _mean(ratio_err.mean(1)) if len(f) else np.nan})
    for k, key in enumerate(RATIOS):
        out[f"{key}_error"] = _mean(ratio_err[:, k]) if len(f) else np.nan
    g, pg = c["grade"].to_numpy(dtype=int), c["pred_grade"].to_numpy(dtype=int)
    out["grade_kappa"] = float(cohen_kappa_score(g, pg, weights="linear", labels=[0, 1, 2, 3])) \
        if len(set(g) | set(pg)) > 1 else np.nan
    y = (c["grade"] > 0).to_numpy()
    out["auc"] = float(roc_auc_score(y, c["p_fracture"])) if 0 < y.sum() < len(y) else np.nan
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
    r = scored(bodies)
    counts = {"images": len(groups), "vertebrae": len(bodies), "fractured": int((r["grade"] > 0).sum())}
    counts.update({f"grade{g}": int((r["grade"] == g).sum()) for g in (1, 2, 3)})
    counts["unreadable"] = len(bodies) - len(r)
    if "pred_evaluable" in bodies:
        counts["not_evaluable_calls"] = int((bodies["found"] & ~bodies["pred_evaluable"].astype(bool)).sum())
    out["n"] = counts
    out["breakdown"] = breakdown(bodies, alpha)
    return out


BANDS = {"T4-T6": ("T4", "T5", "T6"), "T7-T12": ("T7", "T8", "T9", "T10", "T11", "T12"),
         "L1-L4": ("L1", "L2", "L3", "L4")}
GROUP_SHARES = ("sensitivity", "specificity", "readable_agreement")


def _share(k: int, n: int, alpha: float) -> dict:
    return {"value": k / n if n else float("nan"), "ci": list(wilson(k, n, alpha)), "k": k, "n": n}


def _group(b: pd.DataFrame, alpha: float) -> dict:
    """{n (scored bodies), sensitivity, specificity, readable_agreement: {value, ci (Wilson), k, n}}."""
    shares = _proportions(b)
    out = {"n": len(scored(b))}
    for key in GROUP_SHARES:
        if key in shares:
            out[key] = _share(int(shares[key].sum()), len(shares[key]), alpha)
    return out


def breakdown(b: pd.DataFrame, alpha: float = 0.05) -> dict:
    """Sn and Sp (grade >= 1, Wilson CIs) and the readable agreement per vendor (where `b` has a
    `vendor` column), per truth grade, per level band, and the false-positive rate among the scored,
    evaluable, truly normal bodies of each mimic kind (where `b` has `mimic`)."""
    out = {}
    if "vendor" in b and b["vendor"].notna().any():
        out["vendor"] = {str(v): _group(g, alpha) for v, g in b.groupby(b["vendor"].astype(str), sort=True)}
    out["grade"] = {str(g): _group(b[b["grade"] == g], alpha) for g in (0, 1, 2, 3)}
    out["band"] = {name: _group(b[b["level"].isin(levels)], alpha) for name, levels in BANDS.items()}
    if "mimic" in b:
        r = scored(b)
        c = r[r["pred_evaluable"].astype(bool) & (r["grade"] == 0)]
        out["mimic"] = {}
        for kind, g in c.groupby(c["mimic"].astype(str), sort=True):
            k, n = int((g["pred_grade"] > 0).sum()), len(g)
            out["mimic"][kind] = {"n": n, "k": k, "false_positive_rate": k / n, "ci": list(wilson(k, n, alpha))}
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
         ("Per-vertebra AUC of P(fracture)", "auc", ""),
         ("Evaluable call = truth's readable (found)", "readable_agreement", ">= 0.90"),
         ("Readable bodies called not evaluable", "not_evaluable", ""))
OPTIONAL = ("readable_agreement", "not_evaluable")   # rows shown only where there is a body to count


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
        v = m.get(key)
        said = (m.get("readable_agreement") or {}).get("n")   # the truth has `readable`
        if key in OPTIONAL and (not v or not v.get("n") or not (said or v.get("k"))):
            continue
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
    return rows + breakdown_rows(m.get("breakdown") or {})


def _kn(v: dict) -> str:
    return f"{_f(v['value'])} ({v['k']}/{v['n']})"


def breakdown_rows(bd: dict) -> list[dict]:
    """The breakdown as table rows, one per group: "Sn / Sp" (or a mimic kind's false-positive rate),
    k/n and Wilson CIs; a share with no body to count is left out of its row."""
    rows = []
    for grouping in ("vendor", "grade", "band"):
        for name, g in bd.get(grouping, {}).items():
            parts = [(label, g[key]) for label, key in (("Sn", "sensitivity"), ("Sp", "specificity"))
                     if g.get(key, {}).get("n")]
            if not parts:
                continue
            rows.append({"metric": f"{' / '.join(p for p, _ in parts)}, {grouping} {name}",
                         "value": " / ".join(_kn(v) for _, v in parts),
                         "ci": " / ".join(_ci(v["ci"]) for _, v in parts), "method": "Wilson", "goal": "", "met": None})
    mimics = {kind: g for kind, g in bd.get("mimic", {}).items() if kind != "none"}
    if mimics:   # the goal is over every mimic: pooled here, in the table only (the JSON has the kinds)
        k, n = sum(g["k"] for g in mimics.values()), sum(g["n"] for g in mimics.values())
        mimics = {"(any)": {"k": k, "n": n, "false_positive_rate": k / n if n else float("nan"),
                            "ci": list(wilson(k, n))}, **mimics}
    for kind, g in {**mimics, **{k: g for k, g in bd.get("mimic", {}).items() if k == "none"}}.items():
        goal = "<= 0.10" if kind != "none" else ""
        rows.append({"metric": f"False-positive rate, mimic {kind}",
                     "value": _kn(dict(g, value=g["false_positive_rate"])), "ci": _ci(g["ci"]), "method": "Wilson",
                     "goal": goal, "met": goal_met(g["false_positive_rate"], goal)})
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
    model read): misses, wrong levels, bodies called not evaluable, fracture calls that disagree
    (evaluable bodies only), bodies read where none is."""
    found = rows["found"].astype(bool)
    n_found, parts = int(found.sum()), []
    missed = rows[~found]
    if len(missed):
        names = [r.level + (f" (fractured, grade {r.grade})" if r.grade > 0 else "") for r in missed.itertuples()]
        parts.append(f"missed {len(missed)} of {len(rows)}: " + ", ".join(names))
    wrong = rows[found & (rows["level"] != rows["pred_level"])]
    if len(wrong):
        parts.append("wrong level: " + ", ".join(f"{r.level} labelled {r.pred_level}" for r in wrong.itertuples()))
    ne = rows[found & ~rows["pred_evaluable"].astype(bool)] if "pred_evaluable" in rows else rows.iloc[:0]
    if len(ne):
        parts.append("not evaluable: " + ", ".join(ne["level"]))
    rows = rows.drop(index=ne.index)
    found = rows["found"].astype(bool)
    not_called = rows[found & (rows["grade"] > 0) & (rows["pred_grade"] == 0)]
    if len(not_called):
        parts.append("fracture not called: " + ", ".join(f"{r.level} (grade {r.grade})"
                                                         for r in not_called.itertuples()))
    over = rows[found & (rows["grade"] == 0) & (rows["pred_grade"] > 0)]
    if len(over):
        parts.append("called fractured, normal in the truth: " + ", ".join(
            f"{r.level} (read grade {r.pred_grade})" for r in over.itertuples()))
    extra = n_read - n_found
    if extra > 0:
        parts.append(f"{extra} body read where the truth has none" if extra == 1 else
                     f"{extra} bodies read where the truth has none")
    return "; ".join(parts) if parts else "every body found, at its level, and its fracture call as the truth's"
