"""Whether a hazard ratio can be estimated at all, checked before and after the fit.

A Cox or Fine–Gray fit on a small cohort does not fail: it returns HR 1e10 with a CI of 0 to inf
(lifelines only warns, in its own words), and a table shows that number. These checks turn it into
an empty estimate with a reason:

- too few events: fewer than `MIN_EVENTS_PER_TERM` events per model term (the usual rule of thumb,
  Peduzzi et al. 1995; below it coefficients are biased and their CIs unreliable even when the fit
  converges). The rule is the plain count, the same for Cox and Fine–Gray.
- separation (monotone likelihood): a term whose value, at every event, is the highest (or the
  lowest) among the subjects at risk then. The partial likelihood then rises for ever along that
  term, and the "estimate" is wherever Newton–Raphson stopped. Checked exactly, one term at a time
  (a binary term such as the finding, or sex, is the usual case); separation along a combination of
  terms shows up as non-convergence instead.
- no convergence, a singular fit or a CI that is not finite, from the fit itself.
"""
from __future__ import annotations

import math

import numpy as np

MIN_EVENTS_PER_TERM = 10


def too_few_events(events: int, terms: int) -> str | None:
    """The reason, if `events` are too few for a model with `terms` terms."""
    if events < MIN_EVENTS_PER_TERM * terms:
        per = f"{terms} terms, fewer than {MIN_EVENTS_PER_TERM} per term" if terms > 1 else \
            f"fewer than {MIN_EVENTS_PER_TERM}"
        return f"too few events ({events}; {per})"
    return None


def separated(time, event, x, names, stays=None) -> list[str]:
    """The terms (columns of x, named by `names`) that separate: at every event the subject's value is
    the highest, or at every event the lowest, of the risk set. The risk set at time u is everyone
    with time >= u, and also, where `stays` is given (Fine–Gray), everyone with stays True and an
    earlier time (a competing event keeps its subject at risk of the subdistribution)."""
    time, event = np.asarray(time, float), np.asarray(event, bool)
    x = np.asarray(x, float).reshape(len(time), -1)
    if not event.any():
        return []
    order = np.argsort(time, kind="stable")
    t, e, x = time[order], event[order], x[order]
    stays = np.zeros(len(t), bool) if stays is None else np.asarray(stays, bool)[order]
    start = np.searchsorted(t, t[e], side="left")  # each event's risk set: from its first tied time on
    out = []
    for j, name in enumerate(names):
        col = x[:, j]
        hi = _risk_extreme(col, stays, start, np.maximum, -np.inf)
        lo = _risk_extreme(col, stays, start, np.minimum, np.inf)
        if np.all(col[e] >= hi) or np.all(col[e] <= lo):
            out.append(name)
    return out


def _risk_extreme(col, stays, start, ufunc, neutral) -> np.ndarray:
    """The max (or min) of col over each event's risk set: the subjects from `start` on, and the
    earlier ones that stay."""
    later = ufunc.accumulate(col[::-1])[::-1]
    kept = ufunc.accumulate(np.where(stays, col, neutral))
    earlier = np.r_[neutral, kept][start]  # over the subjects before start
    return ufunc(later[start], earlier)


def unusable(rows: list[dict]) -> str | None:
    """The reason, if any estimate of a fitted model is not a finite number with a finite CI."""
    for r in rows:
        values = (r["hr"], r["ci_low"], r["ci_high"])
        if not all(isinstance(v, float) and math.isfinite(v) for v in values) or r["ci_low"] <= 0:
            return f"no finite estimate and CI for {r['term']}"
    return None

