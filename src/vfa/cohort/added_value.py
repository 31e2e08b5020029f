"""Added value of the model's finding (and of its score) over a clinical model (`--base`).

For each outcome, three Cox models (lifelines, Efron ties) on the same complete cases: base (the
clinical risk factors, e.g. the FRAX inputs a registry holds), base + finding (exposure) and base +
score (score_sd). For each, from its linear predictor (higher = riskier; competing events censored):

- Harrell's C and Uno's C (IPCW weights 1/G(t)^2, G the Kaplan–Meier of the censoring times, pairs
  whose earlier time is before tau = the horizon), and the cumulative/dynamic AUC at the horizon
  (cases: the outcome by the horizon, weighted 1/G(t); controls: still followed after it):
  scikit-survival's definitions, computed by vfa.cohort.concordance (sksurv itself is O(n x events));
- against the base model: the differences of the three, the likelihood-ratio test of the nested
  models (2 (ll_full - ll_base), chi-square with 1 df, scipy), and the categorical NRI at
  `risk_cuts` of the predicted risk at the horizon, 1 - S0(h)^exp(lp) from each Cox model's
  baseline survival (cause-specific: deaths censored). The NRI is the simple one on subjects whose
  status at the horizon is known: events are outcomes by the horizon; non-events are subjects
  followed past it without the outcome or who died (the competing event) before it without it;
  subjects censored before the horizon are left out. NRI = (up - down | event) + (down - up | non-event);
- CIs: percentile bootstrap, `replicates` resamples drawn with `seed`, the same resampled rows for
  every model and statistic (paired), the models kept as fitted on all subjects (the CIs are those
  of the apparent performance: no refit per resample, no optimism correction).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import chi2

from vfa.cohort import concordance as conc
from vfa.cohort import survival
from vfa.cohort.data import Cohort

MODELS = (("base", None), ("base + finding", "exposure"), ("base + score", "score_sd"))
RISK_CUTS = (0.10, 0.20)
STATS = ("harrell_c", "uno_c", "auc")


@dataclass
class Model:
    name: str
    cols: list[str]
    lp: np.ndarray | None = None         # linear predictor
    risk: np.ndarray | None = None       # predicted risk at the horizon
    loglik: float | None = None
    reason: str | None = None            # why not estimable


def _fit(c: Cohort, outcome: str, name: str, cols: list[str], horizon: float) -> Model:
    data = c.frame[["time", *cols]].assign(E=survival.event_of(c, outcome))
    reason = survival.before_fit(data, cols, data["E"].to_numpy(bool))
    cph = reason or survival.fit_cox(data)
    if isinstance(cph, str):
        return Model(name, cols, reason=cph)
    x = data[cols]
    lp = cph.predict_log_partial_hazard(x).to_numpy(float)
    risk = 1 - cph.predict_survival_function(x, times=[horizon]).to_numpy(float)[0]
    return Model(name, cols, lp, risk, float(cph.log_likelihood_))


class _Statistics:
    """Every statistic of the three models under one set of row weights (None: the cohort itself)."""

    def __init__(self, c: Cohort, outcome: str, models: list[Model], horizon: float, cuts):
        self.t = c.frame["time"].to_numpy(float)
        code = c.frame[outcome].to_numpy()
        self.e = code == c.codes["event"]
        self.horizon, self.models = horizon, models
        self.pairs = [conc.Concordance(self.t, self.e, m.lp) for m in models]
        self.aucs = [conc.DynamicAUC(self.t, self.e, m.lp, horizon) for m in models]
        self.uno_times = self.pairs[0].time                      # the events, sorted (the same for every model)
        self.case_times = self.t[self.aucs[0].cases]
        self.km = conc.CensoringKM(self.t, self.e, np.r_[self.uno_times, self.case_times])
        # NRI: status at the horizon known (the outcome by then, or not: followed past it, or dead before it)
        self.event_by = self.e & (self.t <= horizon)
        self.nonevent = (self.t > horizon) | ((self.t <= horizon) & (code == c.codes["competing"]))
        self.category = [np.digitize(m.risk, cuts) for m in models]

    def compute(self, weights=None) -> dict:
        g = self.km.at(weights)
        g_uno, g_case = g[:len(self.uno_times)], g[len(self.uno_times):]
        ok = np.all(g_uno[self.uno_times < self.horizon] > 0) and np.all(g_case > 0)
        with np.errstate(divide="ignore"):
            uno_w = np.where(self.uno_times < self.horizon, 1 / g_uno ** 2, 0.0)
            case_w = 1 / g_case
        out = {}
        for k, (pairs, auc) in enumerate(zip(self.pairs, self.aucs)):
            sums = pairs.pair_sums(weights)
            out[("harrell_c", k)] = pairs.c_index(weights, sums=sums)
            out[("uno_c", k)] = pairs.c_index(weights, uno_w, sums) if ok else np.nan
            out[("auc", k)] = auc.value(case_w, weights) if ok else np.nan
        m = np.ones(len(self.t)) if weights is None else weights
        for k in range(1, len(self.models)):
            up, down = self.category[k] > self.category[0], self.category[k] < self.category[0]
            ev, ne = m * self.event_by, m * self.nonevent
            out[("nri_events", k)] = (ev @ up - ev @ down) / ev.sum() if ev.sum() else np.nan
            out[("nri_nonevents", k)] = (ne @ down - ne @ up) / ne.sum() if ne.sum() else np.nan
        return out


def added_value(c: Cohort, outcome: str, horizon: float, cuts=RISK_CUTS, replicates: int = survival.BOOTSTRAP,
                seed: int = 0, log=print) -> list[dict]:
    """Rows {outcome, model, terms, ...} of the three models (module docstring; run.py lists the keys)."""
    models = [_fit(c, outcome, name, [*c.base, *([term] if term else [])], horizon) for name, term in MODELS]
    n, events = len(c.frame), int(survival.event_of(c, outcome).sum())
    if any(m.reason for m in models):
        return [_row(outcome, m, n, events, horizon, cuts, {}, {}, m.reason or "the base model is not estimable",
                     replicates) for m in models]
    stats = _Statistics(c, outcome, models, horizon, cuts)
    point = stats.compute()
    log(f"cohort: added value for '{outcome}': {replicates} paired bootstrap resamples of {n} subjects")
    boot = pd.DataFrame([stats.compute(w) for w in conc.bootstrap_weights(n, replicates, seed)])
    for k in range(1, len(models)):
        point[("nri", k)] = point[("nri_events", k)] + point[("nri_nonevents", k)]
        boot[("nri", k)] = boot[("nri_events", k)] + boot[("nri_nonevents", k)]
        for s in STATS:
            point[(f"delta_{s}", k)] = point[(s, k)] - point[(s, 0)]
            boot[(f"delta_{s}", k)] = boot[(s, k)] - boot[(s, 0)]
    cis = {key: conc.percentile_ci(boot[key]) for key in boot.columns}
    return [_row(outcome, m, n, events, horizon, cuts, {key[0]: v for key, v in point.items() if key[1] == k},
                 {key[0]: v for key, v in cis.items() if key[1] == k}, None, replicates, models[0])
            for k, m in enumerate(models)]


def _row(outcome, m: Model, n, events, horizon, cuts, point: dict, cis: dict, reason, replicates,
         base: Model | None = None) -> dict:
    row = {"outcome": outcome, "model": m.name, "terms": survival.terms_label(m.cols), "n": n, "events": events,
           "horizon": horizon, "tau": horizon, "risk_cuts": ",".join(f"{v:g}" for v in cuts),
           "bootstrap": replicates, "loglik": m.loglik}
    keys = [*STATS, *(f"delta_{s}" for s in STATS), "nri", "nri_events", "nri_nonevents"]
    for key in keys:
        value = point.get(key)
        row[key] = None if value is None or not np.isfinite(value) else float(value)
        lo, hi = cis.get(key, (None, None))
        row[f"{key}_ci_low"], row[f"{key}_ci_high"] = (None, None) if lo is None or not np.isfinite(lo) else (lo, hi)
    lr = None if base is None or m is base else 2 * (m.loglik - base.loglik)
    row.update({"lr_chi2": lr, "lr_df": None if lr is None else 1,
                "lr_p": None if lr is None else float(chi2.sf(lr, 1)), "not_estimable": reason})
    return row
