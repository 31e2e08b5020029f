"""The notebook's `med_metrics`, with its LR- bug fixed and zero denominators made explicit.

Undefined quantities (a zero denominator, a single-class set) are NaN or inf with a human note in
`notes`, never a crash or a flood of numpy warnings.
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

# Scalar keys, in the order they are printed and written to history.csv / test_metrics.json.
SCALAR_KEYS = ("auc", "sn", "sp", "snspavg", "ppv", "npv", "plr", "nlr", "acc", "tn", "fp", "fn", "tp", "n")


def _ratio(num: float, den: float, name: str, notes: list[str]) -> float:
    if den == 0:
        notes.append(f"{name} undefined: zero denominator")
        return math.inf if num > 0 else math.nan
    return num / den


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
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, (p >= thresh).astype(int), labels=[0, 1]).ravel())
    md.update(tn=tn, fp=fp, fn=fn, tp=tp)
    if len(np.unique(y)) == 2:
        md["auc"] = float(roc_auc_score(y, p))
        if with_curve:
            md["fpr"], md["tpr"], md["th"] = roc_curve(y, p)
    else:
        notes.append("AUC undefined: only one class present")
        md["auc"] = math.nan
    md["sn"] = _ratio(tp, tp + fn, "Sn", notes)
    md["sp"] = _ratio(tn, tn + fp, "Sp", notes)
    md["snspavg"] = (md["sn"] + md["sp"]) / 2
    md["ppv"] = _ratio(tp, tp + fp, "PPV", notes)
    md["npv"] = _ratio(tn, tn + fn, "NPV", notes)
    if math.isnan(md["sn"]) or math.isnan(md["sp"]):
        md["plr"] = md["nlr"] = math.nan
    else:
        md["plr"] = _ratio(md["sn"], 1 - md["sp"], "LR+", notes)
        md["nlr"] = _ratio(1 - md["sn"], md["sp"], "LR-", notes)
    md["acc"] = _ratio(tp + tn, y.size, "accuracy", notes)
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
