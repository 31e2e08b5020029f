"""Cumulative incidence with competing risks: the Aalen–Johansen estimator, exactly as R's
`cmprsk::cuminc` computes it, with no randomness.

lifelines' AalenJohansenFitter breaks tied times by a random jitter (and reseeds numpy's global
RNG), so on follow-up in days an event could land after a censoring of the same day. Here, as in
cuminc, all events (of any cause) at a time leave the risk set together, before the censorings of
that time, and the estimate is built from counts per distinct time with cumulative sums:

    S(t-) = prod_{u < t} (1 - d(u) / n(u))                 (all-cause Kaplan–Meier, left limit)
    F(t)  = sum_{u <= t} S(u-) d1(u) / n(u)                (d1: events of interest at u)

The variance is cuminc's (Gray's Fortran `cinc`: the Aalen-type estimator, with its correction
for tied failures, 1 - (d - 1) / (n - 1)); like cuminc it is updated at the times of events of
interest and carried forward between them. CIs are Wald on the log(-log) scale (the delta method),
as lifelines gave them before; cuminc itself gives no CI.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

Z95 = float(norm.ppf(0.975))


@dataclass
class Incidence:
    """The estimate as a right-continuous step function: value[k] holds on [time[k], time[k+1])."""
    label: str
    time: np.ndarray       # 0, then each distinct time with an event (any cause)
    estimate: np.ndarray
    variance: np.ndarray

    def at(self, t: float) -> tuple[float, float]:
        """(estimate, variance) at time t; an event at exactly t counts (as cmprsk::timepoints)."""
        k = int(np.searchsorted(self.time, t, side="right")) - 1
        return float(self.estimate[max(k, 0)]), float(self.variance[max(k, 0)])

    def ci(self, t: float) -> tuple[float, float]:
        """95 % CI at t on the log(-log) scale; NaN where the estimate is still 0 (no variance yet)."""
        f, v = self.at(t)
        if not 0 < f < 1:
            return float("nan"), float("nan")
        half = Z95 * np.sqrt(v) / (f * np.log(f))
        bounds = np.exp(-np.exp(np.log(-np.log(f)) + np.array([-half, half])))
        return float(bounds.min()), float(bounds.max())


def aalen_johansen(time, code, event=1, censored=0, label: str = "") -> Incidence:
    """The cumulative incidence of `event` (code), every code other than `censored` competing."""
    time, code = np.asarray(time, float), np.asarray(code)
    order = np.argsort(time, kind="stable")
    t, c = time[order], code[order]
    u, first = np.unique(t, return_index=True)
    at_risk = len(t) - first
    d1 = np.add.reduceat((c == event).astype(float), first)
    d = np.add.reduceat((c != censored).astype(float), first)
    keep = d > 0  # censorings alone change only the risk set, which `at_risk` already has
    u, n, d1, d = u[keep], at_risk[keep], d1[keep], d[keep]
    d2 = d - d1
    surv = np.cumprod(1 - d / n)                       # S(u), all causes
    before = np.r_[1.0, surv[:-1]]                     # S(u-)
    f = np.cumsum(before * d1 / n)
    var = _cuminc_variance(n, d1, d2, before, surv, f)
    return Incidence(label, np.r_[0.0, u], np.r_[0.0, f], np.r_[0.0, var])


def _cuminc_variance(n, d1, d2, before, surv, f) -> np.ndarray:
    """cuminc's variance at each distinct failure time, carried forward from the last event of
    interest (the terms v1, v2, v3 of Gray's `cinc` accumulate at every failure time)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(surv > 0, 1 / surv, 0.0)
        n_minus_1 = np.maximum(n - 1, 1)
        # the variance of a binomial count of tied failures among n, as cinc: a factor 1 - (d - 1) / (n - 1)
        t6_2 = before ** 2 * np.where(d2 > 1, 1 - (d2 - 1) / n_minus_1, 1.0) * d2 / n ** 2
        t6_2 = np.where((d2 > 0) & (surv > 0), t6_2, 0.0)
        t6_1 = before ** 2 * np.where(d1 > 1, 1 - (d1 - 1) / n_minus_1, 1.0) * d1 / n ** 2
        t4_2, t4_1 = f * inv, 1 + inv * f
    v1 = np.cumsum(t4_2 ** 2 * t6_2 + t4_1 ** 2 * t6_1)
    v2 = np.cumsum(inv * t4_2 * t6_2 + inv * t4_1 * t6_1)
    v3 = np.cumsum(inv ** 2 * (t6_2 + t6_1))
    var = v1 + f ** 2 * v3 - 2 * f * v2
    # recorded only where an event of interest happens; carried forward elsewhere
    last = np.maximum.accumulate(np.where(d1 > 0, np.arange(len(var)), -1))
    return np.where(last >= 0, var[np.maximum(last, 0)], 0.0)
