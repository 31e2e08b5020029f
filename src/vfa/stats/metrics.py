"""The notebook's `med_metrics`, with its LR- bug fixed and zero denominators made explicit.

Undefined quantities (a zero denominator, a single-class set) are NaN or inf with a human note in
`notes`, never a crash or a flood of numpy warnings.
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

# Scalar keys, in the order they are printed and written to history.csv / test_metrics.json.
SCALAR_KEYS = ("auc", "sn", "sp", "snspavg", "ppv", "npv", "plr", "nlr", "acc", "tn", "fp", "fn", "tp", "n")


def _ratio(num: float, den: float, name: str, notes: list[str]) -> float:
    if den == 0:
        notes.append(f"{name} undefined: zero denominator")
        return math.inf if num > 0 else math.nan
    return num / den


# Each rate as (numerator, denominator) of confusion counts: the one definition every table,
# confidence interval and figure uses.
FRACTIONS = {"sn": ("tp", ("tp", "fn")), "sp": ("tn", ("tn", "fp")), "ppv": ("tp", ("tp", "fp")),
             "npv": ("tn", ("tn", "fn")), "acc": (("tp", "tn"), ("tp", "tn", "fp", "fn"))}
RATE_NAMES = {"sn": "Sn", "sp": "Sp", "ppv": "PPV", "npv": "NPV", "acc": "accuracy"}


def outcomes(y, predicted) -> dict[str, np.ndarray]:
    """Boolean masks of the true positives, false positives, false negatives and true negatives."""
    y = np.asarray(y).reshape(-1).astype(int)
    pred = np.asarray(predicted).reshape(-1).astype(bool)
    return {"tp": (y == 1) & pred, "fp": (y == 0) & pred, "fn": (y == 1) & ~pred, "tn": (y == 0) & ~pred}


def confusion(y, predicted) -> dict[str, int]:
    """Counts tp, fp, fn, tn."""
    return {k: int(v.sum()) for k, v in outcomes(y, predicted).items()}


def fractions(counts: dict) -> dict[str, tuple[int, int]]:
    """(numerator, denominator) of Sn, Sp, PPV, NPV and accuracy from confusion counts."""
    def total(keys):
        return sum(counts[k] for k in ((keys,) if isinstance(keys, str) else keys))
    return {name: (total(num), total(den)) for name, (num, den) in FRACTIONS.items()}


def rates(counts: dict, notes: list[str] | None = None) -> dict[str, float]:
    """Sn, Sp, PPV, NPV and accuracy; an undefined one is NaN with a note in `notes`."""
    notes = [] if notes is None else notes
    return {name: _ratio(num, den, RATE_NAMES[name], notes) for name, (num, den) in fractions(counts).items()}


def med_metrics(labels, predictions, thresh: float = 0.5, with_curve: bool = True) -> dict:
    """Sn, Sp, PPV, NPV, LR+, LR- = (1 - Sn) / Sp, accuracy, AUC and ROC at `thresh`.

    `predictions` are P(fracture); (N, 1) arrays are flattened (the notebook compared (N, 1) to (N,)).
    """
    y = np.asarray(labels).reshape(-1).astype(int)
    p = np.asarray(predictions, dtype=float).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.size}) and predictions ({p.size}) differ in length")
    notes: list[str] = []
    md: dict = {"threshold": float(thresh), "n": int(y.size)}
    counts = confusion(y, p >= thresh)
    tn, fp, fn, tp = counts["tn"], counts["fp"], counts["fn"], counts["tp"]
    md.update(tn=tn, fp=fp, fn=fn, tp=tp)
    bad = int((~np.isfinite(p)).sum())
    if bad:
        notes.append(f"AUC undefined: {bad} prediction(s) are NaN or infinite (did training diverge?)")
        md["auc"] = math.nan
    elif len(np.unique(y)) == 2:
        md["auc"] = float(roc_auc_score(y, p))
        if with_curve:
            md["fpr"], md["tpr"], md["th"] = roc_curve(y, p)
    else:
        notes.append("AUC undefined: only one class present")
        md["auc"] = math.nan
    r = rates(counts, notes)
    md.update(sn=r["sn"], sp=r["sp"], snspavg=(r["sn"] + r["sp"]) / 2, ppv=r["ppv"], npv=r["npv"])
    if math.isnan(md["sn"]) or math.isnan(md["sp"]):
        md["plr"] = md["nlr"] = math.nan
    else:
        md["plr"] = _ratio(md["sn"], 1 - md["sp"], "LR+", notes)
        md["nlr"] = _ratio(1 - md["sn"], md["sp"], "LR-", notes)
    md["acc"] = r["acc"]
    md["cm"] = np.array([[tn, fp], [fn, tp]])
    md["notes"] = notes
    return md


def scalars(md: dict, prefix: str = "") -> dict:
    """The JSON/CSV-friendly part of `med_metrics`' output."""
    return {f"{prefix}{k}": (float(md[k]) if k not in ("tn", "fp", "fn", "tp", "n") else int(md[k]))
            for k in SCALAR_KEYS}


def format_line(md: dict) -> str:
    """The notebook's per-epoch print: Sn, Sp, Avg, Acc, AUC."""
    return (f"Sn: {md['sn']:.3f} Sp: {md['sp']:.3f} Avg: {md['snspavg']:.3f} "
            f"Acc: {md['acc']:.3f} AUC: {md['auc']:.3f}")
