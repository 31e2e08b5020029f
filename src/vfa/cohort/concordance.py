"""Harrell's C, Uno's C and the cumulative/dynamic AUC as scikit-survival defines them, for any row
weights, fast enough to bootstrap 100,000 subjects.

scikit-survival's `concordance_index_censored` and `concordance_index_ipcw` compare each event with
every subject (O(n x events): 11 s a call for 100,000 subjects with 24,000 events on this machine),
so a bootstrap of three models is out of reach. This module computes the same sums:

- comparable pairs (i, j): i has the event, and j's time is later, or equal with j censored;
- a pair is concordant when i's score is higher (higher score = higher risk), and counts 1/2 when
  the scores tie (sksurv: within 1e-8; here: equal, the case for linear predictors of equal rows);
- Harrell's C: concordant / comparable; Uno's C: each pair weighted by 1/G(t_i)^2 for t_i < tau,
  G the Kaplan–Meier of the censoring times (sksurv's `CensoringDistributionEstimator`: CensoringKM);
- cumulative/dynamic AUC at t: cases (event by t, weighted 1/G(t_i)) against controls (time > t).

A bootstrap replicate is the original rows with multiplicities (np.bincount of the drawn indices),
so the pair structure is built once per score: each event's comparable set is a suffix of the rows
sorted by time, and "later rows with a lower score" is read from a merge-sort tree (for each level,
the rows sorted by score within blocks of 2^level consecutive rows), whose lookups are fixed; a
replicate then costs one cumulative sum per level. tests/cohort/test_concordance.py checks every
value against sksurv, lifelines and R's survival::concordance.
"""
from __future__ import annotations

import numpy as np


class Concordance:
    """The comparable pairs of one score, for Harrell's and Uno's C under any row weights."""

    def __init__(self, time, event, score):
        time, event, score = np.asarray(time, float), np.asarray(event, bool), np.asarray(score, float)
        self.n = len(time)
        self.order = np.lexsort((~event, time))          # by time; at a tied time, events first
        t, e = time[self.order], event[self.order]
        self.rows = self.order[e]                         # the events' rows, in sorted order
        te = t[e]
        # each event's comparable set: the sorted rows from the first censoring at its time on
        self.start = np.searchsorted(t, te, side="left") + (np.searchsorted(te, te, side="right")
                                                            - np.searchsorted(te, te, side="left"))
        self.time = te
        _, rank = np.unique(score[self.order], return_inverse=True)
        self.rank, self.levels_of = rank, rank.max() + 1
        self.r = rank[e]
        self.levels = [self._level(k) for k in range(max(1, int(np.ceil(np.log2(self.n + 1)))))]

    def _level(self, k: int):
        """Blocks of 2^k sorted rows, each sorted by score: the lookups of the events whose prefix
        [0, start) holds a block at this level (bit k of start set: the block just below start >> k)."""
        block = np.arange(self.n) >> k
        perm = np.lexsort((self.rank, block))
        keys = block[perm].astype(np.int64) * self.levels_of + self.rank[perm]
        active = np.flatnonzero((self.start >> k) & 1)
        base = ((self.start[active] >> k) - 1).astype(np.int64) * self.levels_of
        r = self.r[active]
        return perm, active, *(np.searchsorted(keys, base + off, side="left") for off in (0, r, r + 1))

    def pair_sums(self, weights=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per event (sorted order): the weighted counts of its comparable subjects with a lower
        score, with an equal score, and of all of them."""
        m = np.ones(self.n) if weights is None else np.asarray(weights, float)
        ms = m[self.order]
        below = np.r_[0.0, np.cumsum(np.bincount(self.rank, weights=ms, minlength=self.levels_of))]
        lower, upto = below[self.r].copy(), below[self.r + 1].copy()   # over every row, then minus the prefix
        for perm, active, lo, lt, le in self.levels:
            cw = np.r_[0.0, np.cumsum(ms[perm])]
            lower[active] -= cw[lt] - cw[lo]
            upto[active] -= cw[le] - cw[lo]
        prefix = np.r_[0.0, np.cumsum(ms)]
        return lower, upto - lower, prefix[-1] - prefix[self.start]

    def c_index(self, weights=None, event_weights=None, sums=None) -> float:
        """Harrell's C (event_weights None) or the IPCW C (event_weights: 1/G(t_i)^2, 0 from tau
        on), rows weighted by `weights`; NaN where no pair is comparable. `sums`: pair_sums(weights),
        where the caller computes both C from them."""
        lower, tied, comparable = self.pair_sums(weights) if sums is None else sums
        w = np.ones(len(self.rows)) if weights is None else np.asarray(weights, float)[self.rows]
        if event_weights is not None:
            w = w * event_weights
        den = float(np.sum(w * comparable))
        return float(np.sum(w * (lower + 0.5 * tied)) / den) if den > 0 else float("nan")


class DynamicAUC:
    """The cumulative/dynamic AUC of one score at one time, for any row weights."""

    def __init__(self, time, event, score, at: float):
        time, event, score = np.asarray(time, float), np.asarray(event, bool), np.asarray(score, float)
        self.n = len(time)
        self.cases = np.flatnonzero(event & (time <= at))
        controls = np.flatnonzero(time > at)
        order = np.argsort(score[controls], kind="stable")
        self.controls, sc = controls[order], score[controls][order]
        s = score[self.cases]
        self.lt, self.le = np.searchsorted(sc, s, side="left"), np.searchsorted(sc, s, side="right")

    def value(self, case_weights, weights=None) -> float:
        """AUC with the cases weighted by `case_weights` (1/G(t_i)), rows by `weights`."""
        m = np.ones(self.n) if weights is None else np.asarray(weights, float)
        cw = np.r_[0.0, np.cumsum(m[self.controls])]
        w = m[self.cases] * case_weights
        den = float(np.sum(w) * cw[-1])
        return float(np.sum(w * (cw[self.lt] + 0.5 * (cw[self.le] - cw[self.lt]))) / den) if den > 0 else float("nan")


class CensoringKM:
    """G, the Kaplan–Meier of the censoring times, as sksurv's CensoringDistributionEstimator (the G of
    its Uno's C and AUC: at a tied time the events leave the risk set first; G right-continuous), read
    at fixed times for any row weights (sksurv counts the rows in a Python loop: 0.3 s for 100,000,
    once per bootstrap resample)."""

    def __init__(self, time, event, at):
        time, self.censored = np.asarray(time, float), ~np.asarray(event, bool)
        self.times, self.inverse = np.unique(time, return_inverse=True)
        self.lookup = np.searchsorted(self.times, np.asarray(at, float), side="right") - 1

    def at(self, weights=None) -> np.ndarray:
        m = np.ones(len(self.inverse)) if weights is None else np.asarray(weights, float)
        total = np.bincount(self.inverse, weights=m, minlength=len(self.times))
        cens = np.bincount(self.inverse, weights=m * self.censored, minlength=len(self.times))
        at_risk = np.cumsum(total[::-1])[::-1] - (total - cens)
        ratio = np.divide(cens, at_risk, out=np.zeros(len(total)), where=cens > 0)
        g = np.cumprod(1 - ratio)
        return np.where(self.lookup >= 0, g[np.maximum(self.lookup, 0)], 1.0)


def censoring_survival(time, event, at, weights=None) -> np.ndarray:
    """G(at), fitted on the rows repeated by `weights` (a bootstrap replicate)."""
    return CensoringKM(time, event, at).at(weights)


def bootstrap_weights(n: int, replicates: int, seed: int):
    """Row multiplicities of `replicates` bootstrap resamples of n rows; every statistic computed
    from the same multiplicities is paired (the same resampled patients)."""
    rng = np.random.default_rng(seed)
    for _ in range(replicates):
        yield np.bincount(rng.integers(0, n, n), minlength=n)


def percentile_ci(values) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the finite replicates (NaN, NaN where none is)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)
