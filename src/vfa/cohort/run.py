"""`vfa cohort`: predictions + outcomes -> the analysis a registry study reports, into one folder.

cohort.json has a stable shape for scripts: n, events (counts per code and outcome), exposure,
threshold; cox: [{outcome, model: unadjusted|adjusted, terms, term, hr, ci_low, ci_high, p, n, events,
not_estimable}] (terms: the model's terms, "exposure + age + sex=M", which tells the two adjusted models
apart; term "exposure": the model's finding; "score_sd": the continuous score per SD; covariates;
not_estimable: null, or why hr, CI and p are null: vfa.cohort.estimable);
fine_gray: rows of the same keys, hr the subdistribution HR (Fine–Gray, the competing code, death,
competing; none, and a warning, for an outcome without a competing event); cumulative_incidence:
[{outcome, group, horizon, estimate, ci_low, ci_high, one_minus_km}];
c_index: {outcome, score, estimate, ci_low, ci_high, method} of the first outcome (c_index_all: every
outcome); added_value (with --base): per outcome, a row per model (model: base | base + finding |
base + score; terms, n, events, horizon, tau, risk_cuts, bootstrap, loglik; harrell_c, uno_c, auc (at the
horizon); delta_harrell_c, delta_uno_c, delta_auc (minus the base model's); nri, nri_events,
nri_nonevents; each of these with _ci_low and _ci_high (paired percentile bootstrap); lr_chi2, lr_df,
lr_p (against the base model); not_estimable; base rows have no delta, NRI or LR test)
(vfa.cohort.added_value); bootstrap, seed (of every bootstrap CI); ph_check; agreement (with --reader);
excluded (count of rows left out, all listed in exclusions.csv), excluded_missing_covariate (of
those, rows missing an --adjust or --base covariate: left out of every model, so all models use the
same complete cases), base (the clinical model's columns) and warnings.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from vfa.cohort import survival
from vfa.cohort.added_value import RISK_CUTS, added_value
from vfa.cohort.agreement import agreement
from vfa.cohort.data import Cohort, CohortError, load_cohort
from vfa.cohort.estimable import MIN_EVENTS_PER_TERM
from vfa.cohort.report import forest_figure, incidence_figure, km_figure, write_excel, write_html
from vfa.runs import atomic_write, lock, prepare_run_dir, write_json

METHODS = ("Kaplan–Meier with Greenwood variance and log(-log) CIs; cumulative incidence by Aalen–Johansen "
           "as R's cmprsk::cuminc (events before censorings at tied times, no jitter; cuminc's variance, "
           "delta-method CIs on the log(-log) scale; events at the horizon count); Cox proportional "
           "hazards with Efron ties (lifelines, converged to 1e-10), Wald CIs; proportional hazards checked on "
           "scaled Schoenfeld residuals against rank time; Harrell's C (competing events censored, higher score = "
           "higher risk) with a percentile bootstrap CI (scikit-survival's definition); Fine–Gray subdistribution "
           "hazard ratios with death competing, as R's cmprsk::crr computes them (censoring weights from the "
           "Kaplan–Meier of the censoring times, Breslow ties, crr's robust sandwich SE, Wald CIs); Cohen's kappa "
           "with the Fleiss-Cohen-Everitt SE and PABAK with a Wilson CI.")

ADDED_VALUE_METHODS = (
    "Added value over the clinical model (--base): Cox models base, base + finding and base + score on the same "
    "complete cases; Harrell's C, Uno's C (IPCW 1/G(t)^2, G the Kaplan–Meier of the censoring times, deaths "
    "censored, tau = the horizon) and the cumulative/dynamic AUC at the horizon, as scikit-survival defines them "
    "(computed for all subjects, no subsampling); their differences from the base model with paired percentile "
    "bootstrap CIs (the same resampled rows for every model; models as fitted on all subjects, so apparent "
    "performance without optimism correction); the likelihood-ratio test of the nested models (chi-square, 1 df); "
    "categorical NRI at the risk cut-offs of the predicted risk at the horizon (1 - S0(h)^exp(lp) of each "
    "cause-specific Cox model) on subjects whose status at the horizon is known (events: the outcome by then; "
    "non-events: followed past it or dead before it without the outcome; censored before it: left out), "
    "with paired bootstrap CIs.")


def _models(c: Cohort, outcome: str, warnings: list) -> tuple[list, dict]:
    cox_rows, ph = [], {}
    for adjusted in ((False, True) if c.covariates else (False,)):
        for term in ("exposure", "score_sd"):
            rows, check = survival.cox(c, outcome, adjusted, term)
            cox_rows += rows
            name = f"{outcome}: {rows[0]['terms']}"
            if check:
                ph[name] = check
            failed = [k for k, p in check.items() if p < 0.05]
            if failed:
                warnings.append(f"proportional hazards may not hold ({name}): Schoenfeld test p < 0.05 for "
                                f"{', '.join(failed)}; read the hazard ratio as an average over follow-up")
    return cox_rows, ph


def _fine_gray(c: Cohort, outcome: str, warnings: list) -> list[dict]:
    """The Fine–Gray rows of `outcome` for the same terms and models as the Cox rows."""
    competing = c.codes["competing"]
    if not (c.frame[outcome] == competing).any():
        warnings.append(f"outcome '{outcome}': no competing event (code {competing}), so no Fine–Gray rows: "
                        "without competing events the subdistribution hazard is the cause-specific one (the Cox rows)")
        return []
    return [row for adjusted in ((False, True) if c.covariates else (False,)) for term in ("exposure", "score_sd")
            for row in survival.fine_gray(c, outcome, adjusted, term)]


def _not_estimable(outcome: str, events: int, n: int, rows: list[dict]) -> str | None:
    """One line for the models of `outcome` left empty, by kind of reason (each row has its own)."""
    models = {}
    for r in rows:
        if r["outcome"] == outcome:
            models[(r["estimate"], r["terms"])] = r["not_estimable"]
    empty = {k: why for k, why in models.items() if why}
    if not empty:
        return None
    kinds = {"too few events": "too few events (under {} per term)".format(MIN_EVENTS_PER_TERM),
             "separation": "separation", "the fit": "no convergence or a failed fit"}
    counts = [f"{what} in {sum(key in why for why in empty.values())}" for key, what in kinds.items()
              if any(key in why for why in empty.values())]
    return (f"HR not estimable: {events} events of '{outcome}' among {n} subjects; {len(empty)} of {len(models)} "
            f"models left empty (Cox and Fine–Gray; each row gives its reason): {', '.join(counts)}. "
            "A hazard ratio needs more events, or fewer covariates (--adjust)")


def labelled(result: dict) -> list[dict]:
    """The Cox and Fine–Gray rows in one list, each with the estimate it gives (for tables and plots)."""
    return ([{"estimate": "Cox HR", **r} for r in result["cox"]]
            + [{"estimate": "Fine–Gray sHR", **r} for r in result["fine_gray"]])


def analyze(predictions, outcomes, out, id_col: str = "image_id", exposure: str = "predicted",
            threshold: float | None = None, time: str = "time", events=("event",), codes=(0, 1, 2), adjust=(),
            horizon: float = 5.0, reader: str | None = None, start: str | None = None, end: str | None = None,
            force: bool = False, log=print, base=(), risk_cuts=RISK_CUTS, bootstrap: int = survival.BOOTSTRAP,
            seed: int = 0) -> dict:
    """Every analysis of `vfa cohort` into `out`; returns cohort.json's dict. `bootstrap` resamples
    (drawn with `seed`) give every bootstrap CI; `base`, `risk_cuts`: the added-value analysis."""
    out = Path(out)
    if bootstrap < 1:
        raise CohortError(f"--bootstrap must be at least 1, got {bootstrap}")
    if not all(0 < v < 1 for v in risk_cuts) or list(risk_cuts) != sorted(set(risk_cuts)):
        raise CohortError(f"--risk-cuts must be increasing risks between 0 and 1, got {','.join(map(str, risk_cuts))}")
    with lock(out):
        prepare_run_dir(out, force, [predictions, outcomes], "cohort")
        c = load_cohort(predictions, outcomes, id_col, exposure, threshold, time, events, codes, adjust, start, end,
                        reader, base)
        log(f"cohort: {len(c.frame)} subjects analysed, the same complete cases in every model; {len(c.excluded)} "
            f"rows left out (exclusions.csv), {c.missing_covariates} of them for a missing covariate")
        warnings: list[str] = []
        parts = {"cox": [], "fine_gray": [], "cumulative_incidence": [], "c_index_all": [], "ph_check": {},
                 "added_value": [], "figures": {}}
        for outcome in c.outcomes:
            _outcome(c, outcome, parts, warnings, log, horizon=horizon, risk_cuts=risk_cuts, bootstrap=bootstrap,
                     seed=seed)
        for outcome in c.outcomes:
            line = _not_estimable(outcome, int((c.frame[outcome] == c.codes["event"]).sum()), len(c.frame),
                                  labelled(parts))
            warnings[:0] = [line] if line else []  # first: it changes how everything below reads
        figures = parts.pop("figures")
        result = _result(c, parts, warnings, bootstrap, seed)
        log("cohort: figures and tables")
        figures["Hazard ratios"] = ("forest.png", forest_figure(labelled(result)))
        if reader:
            result["agreement"] = agreement(_binary(c.frame["reader"]), c.frame["exposure"])
        _write(out, c, result, figures)
    for w in warnings:
        log(f"warning: {w}")
    return result


def _outcome(c: Cohort, outcome: str, parts: dict, warnings: list, log, horizon: float, risk_cuts, bootstrap: int,
             seed: int) -> None:
    """Every analysis of one outcome, added to `parts` (lists of rows, figures), with progress lines."""
    log(f"cohort: '{outcome}': Cox models and proportional-hazards checks")
    rows, checks = _models(c, outcome, warnings)
    parts["cox"] += rows
    parts["ph_check"].update(checks)
    log(f"cohort: '{outcome}': Fine–Gray models")
    parts["fine_gray"] += _fine_gray(c, outcome, warnings)
    ci_rows, aj = survival.cumulative_incidence(c, outcome, horizon)
    parts["cumulative_incidence"] += ci_rows
    log(f"cohort: '{outcome}': C-index of the score, {bootstrap} bootstrap resamples")
    parts["c_index_all"].append(survival.c_index(c, outcome, seed, bootstrap))
    if c.base:
        rows = added_value(c, outcome, horizon, risk_cuts, bootstrap, seed, log)
        parts["added_value"] += rows
        empty = [f"{r['model']}: {r['not_estimable']}" for r in rows if r["not_estimable"]]
        if empty:
            warnings.append(f"added value for '{outcome}' not estimable ({'; '.join(empty)}); fewer --base terms, "
                            "or more events, are needed")
    km = survival.kaplan_meier(c, outcome)
    suffix = "" if len(c.outcomes) == 1 else f"_{outcome}"  # title -> (file, png)
    parts["figures"][f"Kaplan–Meier: {outcome}"] = (f"km{suffix}.png", km_figure(km, outcome, horizon))
    labels = {group: survival.group_label(group) for group in (0, 1)}
    parts["figures"][f"Cumulative incidence by finding: {outcome}"] = (
        f"cumulative_incidence{suffix}.png",
        incidence_figure({labels[g]: aj[g] for g in aj}, {labels[g]: km[g] for g in km}, outcome, horizon,
                         "the model's finding", contrast=True))
    parts["figures"][f"Cumulative incidence by score quartile: {outcome}"] = (
        f"cumulative_incidence_quartiles{suffix}.png",
        incidence_figure(*survival.by_quartile(c, outcome), outcome, horizon, "quartile of the score"))


def _binary(values: pd.Series) -> pd.Series:
    """A reader's call as 0/1: numbers, or norm/frac, no/yes, false/true."""
    text = values.astype(str).str.strip().str.lower()
    mapping = {"0": 0, "1": 1, "norm": 0, "frac": 1, "no": 0, "yes": 1, "false": 0, "true": 1}
    bad = ~text.isin(list(mapping))
    if bad.any():
        raise CohortError(f"reader column: values other than 0/1 (or norm/frac, no/yes): {sorted(set(text[bad]))[:5]}")
    return text.map(mapping)


def _result(c: Cohort, parts: dict, warnings, bootstrap: int, seed: int) -> dict:
    events = {o: {str(k): int(v) for k, v in c.frame[o].value_counts().sort_index().items()} for o in c.outcomes}
    text = ("the model's finding (the predictions' 'predicted' column)" if c.threshold is None else
            f"score >= {c.threshold:g} ('{'raw' if c.exposure == 'predicted' else c.exposure}')")
    cindex = parts["c_index_all"]
    methods = METHODS + (" " + ADDED_VALUE_METHODS if parts["added_value"] else "") + \
        f" Bootstrap CIs: {bootstrap} resamples, seed {seed} (--bootstrap, --seed)."
    return {"n": len(c.frame), "events": events, "exposure": c.exposure, "exposure_text": text,
            "threshold": c.threshold, "cox": parts["cox"], "fine_gray": parts["fine_gray"],
            "cumulative_incidence": parts["cumulative_incidence"], "c_index": cindex[0], "c_index_all": cindex,
            "ph_check": parts["ph_check"], "added_value": parts["added_value"], "excluded": len(c.excluded),
            "excluded_missing_covariate": c.missing_covariates, "base": c.base, "bootstrap": bootstrap, "seed": seed,
            "warnings": warnings, "methods": methods}


def _subjects(c: Cohort, events: dict) -> pd.DataFrame:
    """Subjects per outcome code, the columns named by what the code means ("fracture (code 1)")."""
    named = {c.codes["censored"]: "censored", c.codes["event"]: "fracture", c.codes["competing"]: "death, competing"}
    return pd.DataFrame([{"outcome": o, **{f"{named[int(float(k))]} (code {k})": v for k, v in e.items()}}
                         for o, e in events.items()])


def _write(out: Path, c: Cohort, result: dict, figures: dict) -> None:
    tables = {"subjects": _subjects(c, result["events"]),
              "cox": pd.DataFrame(labelled(result)).astype({k: float for k in ("hr", "ci_low", "ci_high", "p")}),
              "cumulative_incidence": pd.DataFrame(result["cumulative_incidence"]),
              "c_index": pd.DataFrame(result["c_index_all"]),
              "ph_check": pd.DataFrame([{"model": m, "term": t, "p": p} for m, d in result["ph_check"].items()
                                        for t, p in d.items()]),
              "excluded": pd.DataFrame(c.excluded[:50], columns=["file", "line", "id", "reason"])}
    if result["added_value"]:
        tables["added_value"] = pd.DataFrame(result["added_value"])
    if "agreement" in result:
        a = result["agreement"]
        tables["agreement"] = pd.DataFrame([{
            "n": a["n"], "observed agreement": a["observed_agreement"],
            "kappa": a["kappa"], "kappa CI": f"{a['kappa_ci'][0]:.3f}-{a['kappa_ci'][1]:.3f}",
            "PABAK": a["pabak"], "PABAK CI": f"{a['pabak_ci'][0]:.3f}-{a['pabak_ci'][1]:.3f}"}])
    result["excluded_more"] = max(0, len(c.excluded) - 50)
    write_json(out / "cohort.json", result)
    atomic_write(out / "exclusions.csv", pd.DataFrame(c.excluded, columns=["file", "line", "id", "reason"])
                 .to_csv(index=False))
    write_excel(out / "cohort.xlsx", tables)
    for name, png in figures.values():
        atomic_write(out / name, png)
    write_html(out / "cohort_report.html", result, tables, {title: png for title, (_, png) in figures.items()})
