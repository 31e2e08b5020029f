"""Diagnostic-accuracy statistics: confidence intervals, DeLong, McNemar, thresholds, calibration.

Pure numpy/scipy/sklearn, no torch. Every function reports an undefined quantity (zero
denominator, single-class set) as NaN plus a note instead of raising, except where the caller
asked for something that cannot exist (a Youden threshold on one class): that is a ValueError.
"""
from __future__ import annotations

import math
import re

import numpy as np
from scipy import optimize, stats
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve

from vfa.stats.metrics import confusion, rates

Z95 = float(stats.norm.ppf(0.975))
NAN2 = (math.nan, math.nan)


# --- confidence intervals --------------------------------------------------------------------

def wilson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (Wilson 1927; Newcombe 1998, method 3).

    Closed form; equals statsmodels' proportion_confint(method="wilson"). n = 0 -> (nan, nan).
    """
    if n == 0:
        return NAN2
    z = float(stats.norm.ppf(1 - alpha / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def likelihood_ratios(tp: int, fp: int, fn: int, tn: int, alpha: float = 0.05) -> dict:
    """LR+ = Sn / (1 - Sp), LR- = (1 - Sn) / Sp with log-method CIs (Simel, Samsa & Matchar 1991):

        SE(ln LR+) = sqrt(1/tp - 1/(tp+fn) + 1/fp - 1/(fp+tn))
        SE(ln LR-) = sqrt(1/fn - 1/(tp+fn) + 1/tn - 1/(fp+tn))

    A zero cell makes the log undefined: the interval is then (nan, nan) with a note; no
    continuity correction is added, so the published formula is what is reported.
    """
    z = float(stats.norm.ppf(1 - alpha / 2))
    notes: list[str] = []
    out: dict = {}
    pos, neg = tp + fn, fp + tn
    for name, a, b, label in (("plr", tp, fp, "LR+"), ("nlr", fn, tn, "LR-")):
        if pos == 0 or neg == 0:
            out[name], out[f"{name}_ci"] = math.nan, NAN2
            notes.append(f"{label} undefined: only one class present")
            continue
        num, den = a / pos, b / neg
        out[name] = num / den if den else (math.inf if num else math.nan)
        if a == 0 or b == 0:
            out[f"{name}_ci"] = NAN2
            notes.append(f"{label} CI undefined: a zero cell ({'tp' if name == 'plr' else 'fn'}={a}, "
                         f"{'fp' if name == 'plr' else 'tn'}={b})")
            continue
        se = math.sqrt(1 / a - 1 / pos + 1 / b - 1 / neg)
        out[f"{name}_ci"] = (out[name] * math.exp(-z * se), out[name] * math.exp(z * se))
    out["notes"] = notes
    return out


# --- DeLong ------------------------------------------------------------------------------------

def delong_covariance(y, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their covariance (k, k) for k score rows, by fast DeLong (Sun & Xu 2014).

    Midranks replace the O(m n) placement-value sums of DeLong et al. (1988): for positive i,
    V10_i = (rank of x_i among all - rank among positives) / n, and symmetrically for negatives.
    """
    y = np.asarray(y).astype(int).reshape(-1)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = stats.rankdata(pos, axis=1)
    ty = stats.rankdata(neg, axis=1)
    tz = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n          # per positive: share of negatives it outranks
    v01 = 1.0 - (tz[:, m:] - ty) / m    # per negative: share of positives that outrank it
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return auc, s10 / m + s01 / n


def delong_ci(y, p, alpha: float = 0.05) -> dict:
    """AUC with its DeLong variance and Wald interval clipped to [0, 1] (as pROC's ci.auc)."""
    y = np.asarray(y).astype(int).reshape(-1)
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m == 0 or n == 0:
        return {"auc": math.nan, "auc_se": math.nan, "auc_ci": NAN2,
                "notes": ["AUC undefined: only one class present"]}
    if m < 2 or n < 2:
        return {"auc": float(roc_auc_score(y, p)), "auc_se": math.nan, "auc_ci": NAN2,
                "notes": ["AUC CI undefined: DeLong needs at least 2 images per class"]}
    auc, cov = delong_covariance(y, p)
    se = math.sqrt(max(float(cov[0, 0]), 0.0))
    z = float(stats.norm.ppf(1 - alpha / 2))
    notes = ["AUC CI degenerate: DeLong variance is zero (perfect separation)"] if se == 0 else []
    a = float(auc[0])
    return {"auc": a, "auc_se": se, "auc_ci": (max(0.0, a - z * se), min(1.0, a + z * se)), "notes": notes}


def delong_paired(y, p_a, p_b, alpha: float = 0.05) -> dict:
    """Paired DeLong test of AUC(a) - AUC(b) on the same images: difference, CI, z, two-sided p."""
    y = np.asarray(y).astype(int).reshape(-1)
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m < 2 or n < 2:
        return {"auc_a": math.nan, "auc_b": math.nan, "diff": math.nan, "diff_ci": NAN2, "z": math.nan,
                "p": math.nan, "notes": ["paired DeLong undefined: needs at least 2 images per class"]}
    auc, cov = delong_covariance(y, np.vstack([p_a, p_b]))
    diff = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    z_crit = float(stats.norm.ppf(1 - alpha / 2))
    if se == 0:
        z, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    return {"auc_a": float(auc[0]), "auc_b": float(auc[1]), "diff": diff, "diff_se": se,
            "diff_ci": (diff - z_crit * se, diff + z_crit * se), "z": z, "p": p, "notes": []}


# --- McNemar -----------------------------------------------------------------------------------

def mcnemar(b: int, c: int, exact: bool | None = None) -> dict:
    """McNemar test on discordant counts b (a right, b wrong) and c (the reverse).

    exact=None picks the exact binomial test when b + c < 25 (the usual rule), else the
    continuity-corrected chi-square; both match statsmodels' `mcnemar`.
    """
    k = b + c
    if exact is None:
        exact = k < 25
    if k == 0:
        return {"b": b, "c": c, "statistic": 0.0, "p": 1.0, "method": "no discordant pairs"}
    if exact:
        p = min(1.0, 2 * float(stats.binom.cdf(min(b, c), k, 0.5)))
        return {"b": b, "c": c, "statistic": float(min(b, c)), "p": p, "method": "exact binomial"}
    chi2 = (abs(b - c) - 1) ** 2 / k
    return {"b": b, "c": c, "statistic": chi2, "p": float(stats.chi2.sf(chi2, 1)),
            "method": "chi-square, continuity-corrected"}


# --- thresholds --------------------------------------------------------------------------------

_SPEC = re.compile(r"^(youden|model|(sensitivity|specificity)=([0-9.]+)|[0-9.eE+-]+)$")


def parse_threshold(spec) -> tuple[str, float | None]:
    """'0.5' | 0.5 -> ('fixed', 0.5); 'youden'; 'sensitivity=0.90'; 'specificity=0.9'; 'model'."""
    text = str(spec).strip().lower()
    match = _SPEC.match(text)
    try:
        if match is None:
            raise ValueError
        if text in ("youden", "model"):
            return text, None
        if match.group(2):
            kind, value = match.group(2), float(match.group(3))
        else:
            kind, value = "fixed", float(text)
    except ValueError:
        raise ValueError(f"threshold must be a number, youden, sensitivity=X, specificity=X or model; "
                         f"got {spec!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold value must lie in [0, 1], got {value}")
    return kind, value


def choose_threshold(y, p, spec) -> float:
    """A threshold t (positive when p >= t) chosen on labelled scores.

    youden: maximises Sn + Sp - 1 (the highest such t on ties); sensitivity=x: the highest t
    with Sn >= x, i.e. the best Sp meeting the target; specificity=x: the lowest t with Sp >= x.
    """
    kind, value = parse_threshold(spec)
    if kind == "fixed":
        return value
    if kind == "model":
        raise ValueError("threshold 'model' is resolved from the checkpoint, not from data")
    y = np.asarray(y).astype(int).reshape(-1)
    p = np.asarray(p, dtype=float).reshape(-1)
    if len(np.unique(y)) < 2:
        raise ValueError(f"cannot choose a '{spec}' threshold on a set with a single class")
    fpr, tpr, th = roc_curve(y, p, drop_intermediate=False)
    th = th.astype(float)
    th[0] = np.nextafter(th[1], np.inf)  # sklearn's +inf: "nobody positive", kept finite for JSON
    if kind == "youden":
        i = int(np.argmax(tpr - fpr))
    elif kind == "sensitivity":
        i = int(np.argmax(tpr >= value - 1e-12))
    else:  # specificity: thresholds fall, so Sp = 1 - fpr falls; the last index still meeting it
        i = int(np.nonzero(1 - fpr >= value - 1e-12)[0][-1])
    return float(th[i])


def operating_points(y, p, thresholds=None) -> list[dict]:
    """Confusion counts, Sn, Sp, PPV, NPV, accuracy and Youden's J at each threshold."""
    y = np.asarray(y).astype(int).reshape(-1)
    p = np.asarray(p, dtype=float).reshape(-1)
    if thresholds is None:
        thresholds = np.round(np.arange(0.05, 0.951, 0.05), 2)
    rows = []
    for t in thresholds:
        counts = confusion(y, p >= t)
        r = rates(counts)
        rows.append({"threshold": float(t), **counts, **r, "youden": r["sn"] + r["sp"] - 1})
    return rows


# --- calibration -------------------------------------------------------------------------------

def _bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    # the binning of sklearn's calibration_curve(strategy="uniform"), so the diagram and ECE agree
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], p)


def ece(y, p, n_bins: int = 10) -> float:
    """Expected calibration error: sum over equal-width bins of (n_b / N) |mean(y_b) - mean(p_b)|."""
    y = np.asarray(y, dtype=float).reshape(-1)
    p = np.asarray(p, dtype=float).reshape(-1)
    if y.size == 0:
        return math.nan
    ids = _bins(p, n_bins)
    counts = np.bincount(ids, minlength=n_bins)
    gap = np.abs(np.bincount(ids, y, n_bins) - np.bincount(ids, p, n_bins))  # |sum y - sum p| per bin
    return float(gap[counts > 0].sum() / y.size)


def calibration(y, p, n_bins: int = 10) -> dict:
    """Brier score (sklearn) and ECE; defined for a single-class set too."""
    y = np.asarray(y).astype(int).reshape(-1)
    p = np.asarray(p, dtype=float).reshape(-1)
    if y.size == 0:
        return {"brier": math.nan, "ece": math.nan, "ece_bins": n_bins}
    return {"brier": float(brier_score_loss(y, p, pos_label=1)), "ece": ece(y, p, n_bins), "ece_bins": n_bins}


def nll(y, logits, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of sigmoid(logits / T), computed stably."""
    z = np.asarray(logits, dtype=float) / temperature
    y = np.asarray(y, dtype=float)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(y, logits) -> float:
    """Temperature T minimising validation NLL of sigmoid(logit / T) (Guo et al. 2017).

    1-D bounded search over log T, so T stays positive; T in [e^-5, e^5].
    """
    y = np.asarray(y).astype(int).reshape(-1)
    logits = np.asarray(logits, dtype=float).reshape(-1)
    if len(np.unique(y)) < 2:
        raise ValueError("temperature scaling needs both classes in the calibration set")
    res = optimize.minimize_scalar(lambda s: nll(y, logits, math.exp(s)), bounds=(-5.0, 5.0),
                                   method="bounded", options={"xatol": 1e-6})
    return float(math.exp(res.x))
