"""Time-to-event analyses of a `Cohort`, on lifelines (no Cox fit written here) and vfa.cohort.finegray.

- Kaplan–Meier by exposure group (Greenwood variance, log(-log) CIs: lifelines' defaults).
- Cumulative incidence with death as a competing risk: Aalen–Johansen (lifelines; Greenwood-type
  variance, delta-method CIs on the log(-log) scale). lifelines breaks tied times by a random jitter
  of at most `JITTER` years; it is seeded, and estimates are read at horizon + 2 * JITTER so that
  events at exactly the horizon count (as `cmprsk::timepoints`); follow-up recorded in days is
  1/365 year apart, far above the jitter.
- Cox proportional hazards, Efron ties, converged to 1e-10; the proportional-hazards check on
  scaled Schoenfeld residuals (rank time transform), with a warning when p < 0.05.
- Harrell's C-index of the score (higher score = higher risk; competing events count as censored),
  with a percentile bootstrap CI.
- Fine–Gray subdistribution hazard ratios of the outcome, death (the competing code) competing:
  vfa.cohort.finegray (cmprsk::crr's estimator and robust SE; lifelines has no Fine–Gray).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from vfa.cohort import finegray
from vfa.cohort.data import Cohort

JITTER = 1e-5        # years: lifelines' Aalen–Johansen tie-breaking shift (seeded)
FIT_OPTIONS = {"precision": 1e-10, "max_steps": 500}
BOOTSTRAP = 200


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
        fits[group] = KaplanMeierFitter(label=_group_label(group)).fit(c.frame["time"][mask], e[mask])
    return fits


def _group_label(group: int) -> str:
    return "model: fracture" if group else "model: no fracture"


def aalen_johansen(c: Cohort, outcome: str, group: int):
    from lifelines import AalenJohansenFitter

    mask = (c.frame["exposure"] == group).to_numpy()
    codes = c.frame.loc[mask, outcome].astype(int)
    fitter = AalenJohansenFitter(jitter_level=JITTER, seed=0, calculate_variance=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "tied event times were detected ... jittered": said in the report
        fitter.fit(c.frame.loc[mask, "time"], codes, event_of_interest=c.codes["event"],
                   label=_group_label(group))
    return fitter


def value_at(frame: pd.DataFrame, t: float) -> pd.Series:
    """The row of a step function (indexed by time) in force at time t."""
    idx = frame.index.to_numpy(float)
    pos = np.searchsorted(idx, t, side="right") - 1
    return frame.iloc[max(pos, 0)]


def cumulative_incidence(c: Cohort, outcome: str, horizon: float) -> tuple[list[dict], dict]:
    """Rows {outcome, group, horizon, estimate, ci_low, ci_high, one_minus_km} and the fitters."""
    rows, fits = [], {}
    km = kaplan_meier(c, outcome)
    for group in (0, 1):
        aj = fits[group] = aalen_johansen(c, outcome, group)
        at = horizon + 2 * JITTER
        est = float(value_at(aj.cumulative_density_, at).iloc[0])
        # (lifelines names its two bound columns the other way round: take them by value)
        bounds = value_at(aj.confidence_interval_, at).to_numpy(float)
        lower, upper = float(np.nanmin(bounds)), float(np.nanmax(bounds))
        rows.append({"outcome": outcome, "group": group, "horizon": horizon, "estimate": est,
                     "ci_low": lower, "ci_high": upper,
                     "one_minus_km": float(1 - km[group].survival_function_at_times(horizon).iloc[0])})
    return rows, fits


def cox(c: Cohort, outcome: str, adjusted: bool, term: str = "exposure") -> tuple[list[dict], dict]:
    """Cox PH rows {outcome, model, term, hr, ci_low, ci_high, p} for `term` (exposure or score_sd),
    alone or with the covariates, and the proportional-hazards check {term: p}."""
    from lifelines import CoxPHFitter
    from lifelines.statistics import proportional_hazard_test

    cols = [term, *(c.covariates if adjusted else [])]
    data = c.frame[["time", *cols]].assign(E=event_of(c, outcome)).dropna()
    cph = CoxPHFitter().fit(data, duration_col="time", event_col="E", fit_options=FIT_OPTIONS)
    s = cph.summary
    rows = [{"outcome": outcome, "model": "adjusted" if adjusted else "unadjusted", "term": k,
             "hr": float(s.loc[k, "exp(coef)"]), "ci_low": float(s.loc[k, "exp(coef) lower 95%"]),
             "ci_high": float(s.loc[k, "exp(coef) upper 95%"]), "p": float(s.loc[k, "p"]), "n": len(data),
             "events": int(data["E"].sum())} for k in cols]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = proportional_hazard_test(cph, data, time_transform="rank")
    ph = {str(k if isinstance(k, str) else k[0]): float(p) for k, p in zip(test.summary.index, test.summary["p"])}
    return rows, ph


def fine_gray(c: Cohort, outcome: str, adjusted: bool, term: str = "exposure") -> tuple[list[dict], bool]:
    """Fine–Gray rows {outcome, model, term, hr, ci_low, ci_high, p, n, events} (hr: the subdistribution
    HR; CI and p on crr's robust SE) for `term`, alone or with the covariates, with the competing
    code competing and every other code censored; and whether the fit converged."""
    cols = [term, *(c.covariates if adjusted else [])]
    codes = c.frame[outcome]
    status = np.select([codes == c.codes["event"], codes == c.codes["competing"]],
                       [finegray.EVENT, finegray.COMPETING], finegray.CENSORED)
    data = c.frame[["time", *cols]].assign(status=status).dropna()
    fit = finegray.fit(data["time"], data["status"], data[cols].to_numpy(float))
    rows = [{"outcome": outcome, "model": "adjusted" if adjusted else "unadjusted", "term": k,
             **{key: est[key] for key in ("hr", "ci_low", "ci_high", "p")}, "n": fit.n, "events": fit.events}
            for k, est in zip(cols, fit.table())]
    return rows, fit.converged


def c_index(c: Cohort, outcome: str, seed: int = 0) -> dict:
    """Harrell's C of the score for the outcome (higher score = higher risk), percentile bootstrap CI."""
    from lifelines.utils import concordance_index

    t, s, e = c.frame["time"].to_numpy(float), c.frame["score"].to_numpy(float), event_of(c, outcome)
    est = concordance_index(t, -s, e)  # lifelines: higher prediction = longer survival
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, len(t), len(t))
        if e[i].sum() and (1 - e[i]).sum():
            boot.append(concordance_index(t[i], -s[i], e[i]))
    lo, hi = np.percentile(boot, [2.5, 97.5]) if boot else (np.nan, np.nan)
    return {"outcome": outcome, "score": c.exposure if c.exposure != "predicted" else "raw", "estimate": float(est),
            "ci_low": float(lo), "ci_high": float(hi), "method": f"Harrell, percentile bootstrap ({BOOTSTRAP})"}

