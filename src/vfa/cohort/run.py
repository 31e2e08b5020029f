"""`vfa cohort`: predictions + outcomes -> the analysis a registry study reports, into one folder.

cohort.json has a stable shape for scripts: n, events (counts per code and outcome), exposure,
threshold; cox: [{outcome, model: unadjusted|adjusted, terms, term, hr, ci_low, ci_high, p, n, events,
not_estimable}] (terms: the model's terms, "exposure + age + sex=M", which tells the two adjusted models
apart; term "exposure": the model's finding; "score_sd": the continuous score per SD; covariates;
not_estimable: null, or why hr, CI and p are null: vfa.cohort.estimable);
fine_gray: rows of the same keys, hr the subdistribution HR (Fine–Gray, the competing code, death,
competing; none, and a warning, for an outcome without a competing event); cumulative_incidence:
[{outcome, group, horizon, estimate, ci_low, ci_high, one_minus_km}];
c_index: {outcome, score, estimate, ci_low, ci_high} of the first outcome (c_index_all: every
outcome); ph_check; agreement (with --reader); excluded (count of rows left out, all listed in
exclusions.csv), excluded_missing_covariate (of those, rows missing an --adjust or --base covariate:
left out of every model, so all models use the same complete cases), base (the clinical model's
columns) and warnings.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from vfa.cohort import survival
from vfa.cohort.agreement import agreement
from vfa.cohort.data import Cohort, load_cohort
from vfa.cohort.estimable import MIN_EVENTS_PER_TERM
from vfa.cohort.report import forest_figure, incidence_figure, km_figure, write_excel, write_html
from vfa.runs import atomic_write, lock, prepare_run_dir, write_json

METHODS = ("Kaplan–Meier with Greenwood variance and log(-log) CIs; cumulative incidence by Aalen–Johansen "
           "as R's cmprsk::cuminc (events before censorings at tied times, no jitter; cuminc's variance, "
           "delta-method CIs on the log(-log) scale; events at the horizon count); Cox proportional "
           "hazards with Efron ties (lifelines, converged to 1e-10), Wald CIs; proportional hazards checked on "
           "scaled Schoenfeld residuals against rank time; Harrell's C (competing events censored, higher score = "
           "higher risk) with a percentile bootstrap CI; Fine–Gray subdistribution hazard ratios with death "
           "competing, as R's cmprsk::crr computes them (censoring weights from the Kaplan–Meier of the "
           "censoring times, Breslow ties, crr's robust sandwich SE, Wald CIs); Cohen's kappa with the "
           "Fleiss-Cohen-Everitt SE and PABAK with a Wilson CI.")


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
            force: bool = False, log=print, base=()) -> dict:
    """Every analysis of `vfa cohort` into `out`; returns cohort.json's dict."""
    out = Path(out)
    with lock(out):
        prepare_run_dir(out, force, [predictions, outcomes], "cohort")
        c = load_cohort(predictions, outcomes, id_col, exposure, threshold, time, events, codes, adjust, start, end,
                        reader, base)
        log(f"cohort: {len(c.frame)} subjects analysed, the same complete cases in every model; {len(c.excluded)} "
            f"rows left out (exclusions.csv), {c.missing_covariates} of them for a missing covariate")
        warnings: list[str] = []
        cox_rows, fg_rows, ph, incidence, cindex, figures = [], [], {}, [], [], {}
        for outcome in c.outcomes:
            rows, checks = _models(c, outcome, warnings)
            cox_rows, ph = cox_rows + rows, {**ph, **checks}
            fg_rows += _fine_gray(c, outcome, warnings)
            ci_rows, aj = survival.cumulative_incidence(c, outcome, horizon)
            incidence += ci_rows
            cindex.append(survival.c_index(c, outcome))
            km = survival.kaplan_meier(c, outcome)
            suffix = "" if len(c.outcomes) == 1 else f"_{outcome}"  # title -> (file, png)
            figures[f"Kaplan–Meier: {outcome}"] = (f"km{suffix}.png", km_figure(km, outcome, horizon))
            figures[f"Cumulative incidence: {outcome}"] = (f"cumulative_incidence{suffix}.png",
                                                           incidence_figure(aj, km, outcome, horizon))
        for outcome in c.outcomes:
            line = _not_estimable(outcome, int((c.frame[outcome] == c.codes["event"]).sum()), len(c.frame),
                                  labelled({"cox": cox_rows, "fine_gray": fg_rows}))
            warnings[:0] = [line] if line else []  # first: it changes how everything below reads
        result = _result(c, cox_rows, fg_rows, incidence, cindex, ph, warnings)
        figures["Hazard ratios"] = ("forest.png", forest_figure(labelled(result)))
        if reader:
            result["agreement"] = agreement(_binary(c.frame["reader"]), c.frame["exposure"])
        _write(out, c, result, figures)
    for w in warnings:
        log(f"warning: {w}")
    return result


def _binary(values: pd.Series) -> pd.Series:
    """A reader's call as 0/1: numbers, or norm/frac, no/yes, false/true."""
    text = values.astype(str).str.strip().str.lower()
    mapping = {"0": 0, "1": 1, "norm": 0, "frac": 1, "no": 0, "yes": 1, "false": 0, "true": 1}
    bad = ~text.isin(list(mapping))
    if bad.any():
        from vfa.cohort.data import CohortError
        raise CohortError(f"reader column: values other than 0/1 (or norm/frac, no/yes): {sorted(set(text[bad]))[:5]}")
    return text.map(mapping)


def _result(c: Cohort, cox_rows, fg_rows, incidence, cindex, ph, warnings) -> dict:
    events = {o: {str(k): int(v) for k, v in c.frame[o].value_counts().sort_index().items()} for o in c.outcomes}
    text = ("the model's finding (the predictions' 'predicted' column)" if c.threshold is None else
            f"score >= {c.threshold:g} ('{'raw' if c.exposure == 'predicted' else c.exposure}')")
    return {"n": len(c.frame), "events": events, "exposure": c.exposure, "exposure_text": text,
            "threshold": c.threshold, "cox": cox_rows, "fine_gray": fg_rows, "cumulative_incidence": incidence,
            "c_index": cindex[0], "c_index_all": cindex, "ph_check": ph, "excluded": len(c.excluded),
            "excluded_missing_covariate": c.missing_covariates, "base": c.base,
            "warnings": warnings, "methods": METHODS}


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
