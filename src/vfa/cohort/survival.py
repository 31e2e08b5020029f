"""Time-to-event analyses of a `Cohort`, on lifelines (no Cox fit written here) and vfa.cohort.finegray.

- Kaplan–Meier by exposure group (Greenwood variance, log(-log) CIs: lifelines' defaults).
- Cumulative incidence with death as a competing risk: Aalen–Johansen as R's `cmprsk::cuminc`
  (vfa.cohort.incidence: events before censorings at tied times, no jitter, cuminc's variance,
  delta-method CIs on the log(-log) scale); events at exactly the horizon count (`cmprsk::timepoints`).
- Cox proportional hazards, Efron ties, converged to 1e-10; the proportional-hazards check on
  scaled Schoenfeld residuals (rank time transform), with a warning when p < 0.05.
- Harrell's C-index of the score (higher score = higher risk; competing events count as censored),
  with a percentile bootstrap CI (`replicates` resamples, `seed`: the options --bootstrap, --seed);
  vfa.cohort.concordance computes scikit-survival's C for any row weights, fast enough for 100,000.
- Fine–Gray subdistribution hazard ratios of the outcome, death (the competing code) competing:
  vfa.cohort.finegray (cmprsk::crr's estimator and robust SE; lifelines has no Fine–Gray).
- A Cox or Fine–Gray model that cannot be estimated (too few events per term, separation, no
  convergence: vfa.cohort.estimable) gives rows with no HR, CI or p and the reason, not the 1e10
  where Newton–Raphson stopped; lifelines' and numpy's warnings on the way are caught, not printed.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from vfa.cohort import concordance, estimable, finegray, incidence
from vfa.cohort.data import Cohort

FIT_OPTIONS = {"precision": 1e-10, "max_steps": 500}
BOOTSTRAP = 200      # resamples of the bootstrap CIs (--bootstrap), seeded by --seed (default 0)


def event_of(c: Cohort, outcome: str) -> np.ndarray:
    """1 for the outcome event, 0 otherwise (censored, or a competing event: censored at its time)."""
    return (c.frame[outcome] == c.codes["event"]).to_numpy(int)


def kaplan_meier(c: Cohort, outcome: str) -> dict:
    """{group: fitted KaplanMeierFitter} for exposure 0 and 1."""
    from lifelines import KaplanMeierFitter

    e = event_of(c, outcome)
    fits = {}
    for group in (0, 1):
        mask = (c.frame["exposure"] == group).to_numpy()
        fits[group] = KaplanMeierFitter(label=group_label(group)).fit(c.frame["time"][mask], e[mask])
    return fits


def group_label(group: int) -> str:
    return "model: fracture" if group else "model: no fracture"


def aalen_johansen(c: Cohort, outcome: str, group: int) -> incidence.Incidence:
    """The Aalen–Johansen cumulative incidence of the outcome in one exposure group (cuminc's)."""
    mask = (c.frame["exposure"] == group).to_numpy()
    return incidence.aalen_johansen(c.frame.loc[mask, "time"], c.frame.loc[mask, outcome].astype(int),
                                    event=c.codes["event"], censored=c.codes["censored"], label=group_label(group))


def cumulative_incidence(c: Cohort, outcome: str, horizon: float) -> tuple[list[dict], dict]:
    """Rows {outcome, group, horizon, estimate, ci_low, ci_high, one_minus_km} and the estimates."""
    rows, fits = [], {}
    km = kaplan_meier(c, outcome)
    for group in (0, 1):
        aj = fits[group] = aalen_johansen(c, outcome, group)
        lower, upper = aj.ci(horizon)
        rows.append({"outcome": outcome, "group": group, "horizon": horizon, "estimate": aj.at(horizon)[0],
                     "ci_low": lower, "ci_high": upper,
                     "one_minus_km": float(1 - km[group].survival_function_at_times(horizon).iloc[0])})
    return rows, fits


def by_quartile(c: Cohort, outcome: str) -> tuple[dict, dict]:
    """Aalen–Johansen {label: Incidence} and Kaplan–Meier {label: fitter} by quartile of the score
    (fewer groups where tied scores merge quartiles)."""
    from lifelines import KaplanMeierFitter

    quartile = pd.qcut(c.frame["score"], 4, labels=False, duplicates="drop").to_numpy()
    last = int(quartile.max())
    aj, km = {}, {}
    for q in range(last + 1):
        mask = quartile == q
        label = f"score Q{q + 1}" + (" (lowest)" if q == 0 else " (highest)" if q == last else "")
        codes = c.frame.loc[mask, outcome].astype(int)
        aj[label] = incidence.aalen_johansen(c.frame.loc[mask, "time"], codes, event=c.codes["event"],
                                             censored=c.codes["censored"], label=label)
        km[label] = KaplanMeierFitter(label=label).fit(c.frame.loc[mask, "time"], codes == c.codes["event"])
    return aj, km


def model_name(adjusted: bool) -> str:
    return "adjusted" if adjusted else "unadjusted"


def terms_label(cols: list[str]) -> str:
    """A model named by its terms ("exposure + age + sex=M"): the two adjusted models differ by their first."""
    return " + ".join(cols)


def _row(outcome: str, cols: list[str], adjusted: bool, term: str, est: dict | None, n: int, events: int,
         reason: str | None) -> dict:
    return {"outcome": outcome, "model": model_name(adjusted), "terms": terms_label(cols), "term": term,
            **{k: float(est[k]) if est else None for k in ("hr", "ci_low", "ci_high", "p")}, "n": n, "events": events,
            "not_estimable": reason}


def before_fit(data: pd.DataFrame, cols: list[str], event, stays=None) -> str | None:
    """Why the model cannot be estimated, found without fitting it (too few events, separation)."""
    reasons = [estimable.too_few_events(int(np.sum(event)), len(cols))]
    split = estimable.separated(data["time"], event, data[cols], cols, stays)
    if split:
        reasons.append(f"separation on {', '.join(split)} (at every event the highest or the lowest value "
                       "at risk: the HR runs to 0 or infinity)")
    return "; ".join(r for r in reasons if r) or None


def cox(c: Cohort, outcome: str, adjusted: bool, term: str = "exposure") -> tuple[list[dict], dict]:
    """Cox PH rows {outcome, model, terms, term, hr, ci_low, ci_high, p, n, events, not_estimable} for
    `term` (exposure or score_sd), alone or with the covariates, and the proportional-hazards check
    {term: p}. A model that is not estimable (vfa.cohort.estimable) has hr, CI and p None, the reason
    in not_estimable, and no check."""
    cols = [term, *(c.covariates if adjusted else [])]
    data = c.frame[["time", *cols]].assign(E=event_of(c, outcome)).dropna()
    n, events = len(data), int(data["E"].sum())
    reason = before_fit(data, cols, data["E"].to_numpy(bool))
    if not reason:
        cph = fit_cox(data)
        if isinstance(cph, str):
            reason = cph
        else:
            s = cph.summary
            named = {"hr": "exp(coef)", "ci_low": "exp(coef) lower 95%", "ci_high": "exp(coef) upper 95%", "p": "p"}
            rows = [_row(outcome, cols, adjusted, k, {key: s.loc[k, col] for key, col in named.items()}, n, events,
                         None) for k in cols]
            reason = estimable.unusable(rows)
    if reason:
        return [_row(outcome, cols, adjusted, k, None, n, events, reason) for k in cols], {}
    return rows, _ph_check(cph, data)


def fit_cox(data: pd.DataFrame):
    """The fitted CoxPHFitter, or why there is none. lifelines' own warnings (with code and a link) are
    caught: the ones that mean the fit did not settle become the reason, said once by vfa."""
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError, ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # lifelines' batch Efron is 3.5x faster on follow-up in days (100,000 subjects, 3,300 distinct
            # days: 1.6 s against 5.6 s), and its own choice misses it there; near-unique times keep its choice
            batch = True if data["time"].nunique() < 0.2 * len(data) else None
            cph = CoxPHFitter().fit(data, duration_col="time", event_col="E", fit_options=FIT_OPTIONS,
                                    batch_mode=batch)
        except ConvergenceError as e:
            return f"the fit failed ({str(e).split('.')[0]})"
    failed = ("failed to converge", "still high", "suspiciously close to 0")
    if any(issubclass(w.category, ConvergenceWarning) and any(f in str(w.message) for f in failed) for w in caught):
        return "the fit did not converge (collinear terms, or separation on a combination of them)"
    return cph


def _ph_check(cph, data: pd.DataFrame) -> dict:
    from lifelines.statistics import proportional_hazard_test

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = proportional_hazard_test(cph, data, time_transform="rank",
                                        precomputed_residuals=scaled_schoenfeld(cph, data))
    return {str(k if isinstance(k, str) else k[0]): float(p) for k, p in zip(test.summary.index, test.summary["p"])}


def scaled_schoenfeld(cph, data: pd.DataFrame) -> pd.DataFrame:
    """lifelines' scaled Schoenfeld residuals (Efron ties: each tied event's expected covariate is the
    mean over l = 0..d-1 of the risk set with l/d of the tied events taken out), from cumulative sums.
    lifelines builds them row by row with np.append: 9 s a model at 100,000 subjects. The rows keep
    lifelines' order of the fit (cph.durations), which its rank time transform pairs them with;
    tests/cohort/test_ties.py checks them against lifelines' own."""
    order, cols = cph.durations.index, list(cph.params_.index)
    x = data.loc[order, cols].to_numpy(float)
    t, e = cph.durations.to_numpy(float), cph.event_observed.to_numpy(bool)
    phi = np.exp(x @ cph.params_.to_numpy(float))
    starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])          # each distinct time's first row
    group = np.cumsum(np.r_[True, t[1:] != t[:-1]]) - 1
    risk0 = np.cumsum(phi[::-1])[::-1][starts]                       # the risk set: every row from the time on
    risk1 = np.cumsum((phi[:, None] * x)[::-1], axis=0)[::-1][starts]
    rows = np.flatnonzero(e)
    g = group[rows]
    d = np.bincount(g, minlength=len(starts)).astype(float)
    tie0 = np.bincount(g, weights=phi[rows], minlength=len(starts))
    tie1 = np.stack([np.bincount(g, weights=phi[rows] * x[rows, j], minlength=len(starts))
                     for j in range(x.shape[1])], axis=1)
    frac = (np.arange(len(rows)) - np.searchsorted(g, g, side="left")) / d[g]   # l / d of each tied event
    term = (risk1[g] - frac[:, None] * tie1[g]) / (risk0[g] - frac * tie0[g])[:, None]
    mean = np.zeros_like(risk1)
    np.add.at(mean, g, term)
    resid = x[rows] - mean[g] / d[g][:, None]
    return pd.DataFrame(len(rows) * resid @ cph.variance_matrix_.to_numpy(float), columns=cols, index=order[rows])


def fine_gray(c: Cohort, outcome: str, adjusted: bool, term: str = "exposure") -> list[dict]:
    """Fine–Gray rows with the keys of the Cox rows (hr: the subdistribution HR; CI and p on crr's
    robust SE) for `term`, alone or with the covariates, with the competing code competing and every
    other code censored; a model that is not estimable, or that does not converge, is left empty with
    its reason, as a Cox model is."""
    cols = [term, *(c.covariates if adjusted else [])]
    codes = c.frame[outcome]
    status = np.select([codes == c.codes["event"], codes == c.codes["competing"]],
                       [finegray.EVENT, finegray.COMPETING], finegray.CENSORED)
    data = c.frame[["time", *cols]].assign(status=status).dropna()
    n, events = len(data), int((data["status"] == finegray.EVENT).sum())
    reason = before_fit(data, cols, data["status"] == finegray.EVENT, data["status"] == finegray.COMPETING)
    rows = []
    if not reason:
        try:
            # a fit running off to infinity underflows exp() on the way; finegray handles the NaNs (step
            # halving, converged False) and the reason below says it once, not numpy on stderr
            with np.errstate(all="ignore"):
                fit = finegray.fit(data["time"], data["status"], data[cols].to_numpy(float))
        except finegray.FineGrayError as e:
            reason = f"the fit failed ({e})"
        else:
            rows = [_row(outcome, cols, adjusted, k, est, n, events, None) for k, est in zip(cols, fit.table())]
            reason = "the fit did not converge" if not fit.converged else estimable.unusable(rows)
    return [_row(outcome, cols, adjusted, k, None, n, events, reason) for k in cols] if reason else rows


def c_index(c: Cohort, outcome: str, seed: int = 0, replicates: int = BOOTSTRAP) -> dict:
    """Harrell's C of the score for the outcome (higher score = higher risk), percentile bootstrap CI
    of `replicates` resamples drawn with `seed` (vfa.cohort.concordance: sksurv's definition, fast)."""
    t, s, e = c.frame["time"].to_numpy(float), c.frame["score"].to_numpy(float), event_of(c, outcome)
    pairs = concordance.Concordance(t, e, s)
    est = pairs.c_index()
    lo, hi = concordance.percentile_ci([pairs.c_index(m) for m in concordance.bootstrap_weights(len(t), replicates,
                                                                                                  seed)])
    return {"outcome": outcome, "score": c.exposure if c.exposure != "predicted" else "raw", "estimate": float(est),
            "ci_low": lo, "ci_high": hi, "method": f"Harrell, percentile bootstrap ({replicates}, seed {seed})"}
