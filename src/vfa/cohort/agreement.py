"""Agreement of the model's finding with a reader: Cohen's kappa and PABAK, with 95 % CIs.

Kappa's CI uses the large-sample standard error of Fleiss, Cohen and Everitt (1969), as
statsmodels' `cohens_kappa` and R's `psych::cohen.kappa` do (a Wald interval, cut at -1 and 1);
PABAK = 2 p_o - 1 (Byrt, Bishop and Carlin 1993), its CI the Wilson interval of the observed
agreement p_o, mapped the same way.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import norm

from vfa.stats.accuracy import wilson


def agreement(a, b, alpha: float = 0.05) -> dict:
    """Two binary ratings of the same subjects (0/1) -> n, the 2x2 table, p_o, kappa and PABAK with CIs."""
    a, b = np.asarray(a, int), np.asarray(b, int)
    n = len(a)
    table = np.array([[np.sum((a == i) & (b == j)) for j in (0, 1)] for i in (0, 1)], float)
    p = table / n
    po, rows, cols = np.trace(p), p.sum(1), p.sum(0)
    pe = float(rows @ cols)
    kappa = (po - pe) / (1 - pe) if pe < 1 else float("nan")
    # Fleiss, Cohen & Everitt (1969): the variance of kappa-hat
    diag = sum(p[i, i] * (1 - (rows[i] + cols[i]) * (1 - kappa)) ** 2 for i in (0, 1))
    off = (1 - kappa) ** 2 * sum(p[i, j] * (cols[i] + rows[j]) ** 2 for i in (0, 1) for j in (0, 1) if i != j)
    var = (diag + off - (kappa - pe * (1 - kappa)) ** 2) / (n * (1 - pe) ** 2) if pe < 1 else float("nan")
    z = norm.ppf(1 - alpha / 2)
    se = float(np.sqrt(max(var, 0.0)))
    lo, hi = wilson(int(np.trace(table)), n, alpha)
    return {"n": n, "table": table.astype(int).tolist(), "observed_agreement": float(po), "kappa": float(kappa),
            "kappa_se": se, "kappa_ci": [float(max(-1.0, kappa - z * se)), float(min(1.0, kappa + z * se))],
            "pabak": float(2 * po - 1), "pabak_ci": [2 * lo - 1, 2 * hi - 1],
            "methods": "kappa: Fleiss-Cohen-Everitt SE, Wald CI; PABAK: Wilson CI of p_o, 2p-1"}


def weighted_kappa(a, b, categories, weights: str = "linear", alpha: float = 0.05) -> dict:
    """Two ordinal ratings (e.g. Genant grades 0-3) -> weighted kappa with its Wald CI.

    Weights: linear 1 - |i-j|/(k-1) or quadratic 1 - ((i-j)/(k-1))^2 (as scikit-learn's
    `cohen_kappa_score(weights=...)`, which uses disagreement weights: the same kappa). The SE is
    Fleiss, Cohen and Everitt's (1969) for weighted kappa, as statsmodels' `cohens_kappa(wt=...)`."""
    cats = list(categories)
    index = {c: i for i, c in enumerate(cats)}
    a, b = [index[v] for v in a], [index[v] for v in b]
    n, k = len(a), len(cats)
    table = np.zeros((k, k))
    for i, j in zip(a, b):
        table[i, j] += 1
    p = table / n
    d = np.abs(np.subtract.outer(np.arange(k), np.arange(k))) / max(k - 1, 1)
    w = 1 - (d if weights == "linear" else d ** 2)
    rows, cols = p.sum(1), p.sum(0)
    po, pe = float((w * p).sum()), float((w * np.outer(rows, cols)).sum())
    kappa = (po - pe) / (1 - pe) if pe < 1 else float("nan")
    wi, wj = w @ cols, rows @ w  # row and column mean weights
    term = (p * (w - np.add.outer(wi, wj) * (1 - kappa)) ** 2).sum()
    var = (term - (kappa - pe * (1 - kappa)) ** 2) / (n * (1 - pe) ** 2) if pe < 1 else float("nan")
    se = float(np.sqrt(max(var, 0.0))) if var == var else float("nan")
    z = norm.ppf(1 - alpha / 2)
    return {"n": n, "weights": weights, "categories": cats, "table": table.astype(int).tolist(),
            "kappa": float(kappa), "kappa_se": se,
            "kappa_ci": [float(max(-1.0, kappa - z * se)), float(min(1.0, kappa + z * se))],
            "methods": "weighted kappa: Fleiss-Cohen-Everitt SE, Wald CI"}
