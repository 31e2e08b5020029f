"""The cohort analysis: known answers (a planted HR, statsmodels' Cox, a hand-computed Aalen–Johansen,
Harrell's C by brute force, statsmodels' kappa) and every bad input named by its CSV line."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.cohort.helpers import cohort_files as _files
from vfa.cli import main as cli_main
from vfa.cohort import survival
from vfa.cohort.agreement import agreement
from vfa.cohort.data import Cohort, CohortError, load_cohort

CODES = {"censored": 0, "event": 1, "competing": 2}


BASE = ["age", "sex", "bmd_tscore", "prior_fracture", "glucocorticoids"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_hazard_ratios_are_recovered(tmp_path, seed):
    c = load_cohort(*_files(tmp_path, seed=seed), adjust=BASE)
    rows, _ = survival.cox(c, "event", adjusted=True)
    planted = {"exposure": 1.85, "prior_fracture": 1.8, "glucocorticoids": 1.6, "age": 1.5 ** 0.1}
    for r in rows:
        if r["term"] in planted:
            assert r["ci_low"] <= planted[r["term"]] <= r["ci_high"], r


def test_synth_cohort_keeps_the_draws_of_the_older_columns():
    """prior_fracture and glucocorticoids are drawn last: age, sex and BMD are a seed's, and a subject
    with neither keeps its time (fixed numbers of draw_outcomes(seed 0) before the two were added)."""
    from vfa.cohort.synth import draw_outcomes

    d = draw_outcomes(np.array([0, 1, 0, 0, 1, 0]), 1.85, seed=0)
    assert (d[["prior_fracture", "glucocorticoids"]] == 0).all().all()
    assert d["time"].tolist() == [3.0185, 6.114, 0.6201, 2.7879, 7.05, 5.442]
    assert d["event"].tolist() == [1, 0, 1, 1, 1, 0] and d["sex"].tolist() == ["F", "F", "F", "M", "F", "F"]
    assert d["age"].tolist() == [72.9, 75.1, 76.5, 72.7, 72.3, 74.5]
    assert d["bmd_tscore"].tolist() == [-3.83, -2.32, -2.75, -2.23, -2.64, -1.82]


def test_cox_matches_statsmodels_efron(tmp_path):
    import statsmodels.api as sm

    c = load_cohort(*_files(tmp_path, n=1000, seed=5), adjust=BASE)
    d = c.frame
    for adjusted, cols in ((False, ["exposure"]), (True, ["exposure", *c.covariates])):
        ours, _ = survival.cox(c, "event", adjusted)
        ref = sm.PHReg(d["time"].to_numpy(), d[cols].to_numpy(float), status=(d["event"] == 1).to_numpy(int),
                       ties="efron").fit()
        for row, beta, se in zip(ours, ref.params, ref.bse):
            assert row["hr"] == pytest.approx(np.exp(beta), abs=1e-4)
            assert row["ci_high"] == pytest.approx(np.exp(beta + 1.959964 * se), abs=1e-3)


def test_unadjusted_hr_is_confounded_as_planted(tmp_path):
    c = load_cohort(*_files(tmp_path, seed=4), adjust=["age", "sex", "bmd_tscore"])
    crude = survival.cox(c, "event", adjusted=False)[0][0]["hr"]
    adjusted = survival.cox(c, "event", adjusted=True)[0][0]["hr"]
    assert crude > adjusted  # exposed patients are older with lower BMD: the crude HR is higher


def _cohort(time, code, exposure=None):
    n = len(time)
    frame = pd.DataFrame({"id": range(n), "time": np.asarray(time, float), "event": code,
                          "exposure": exposure if exposure is not None else [0] * n, "score": np.arange(n, dtype=float),
                          "score_sd": 0.0})
    return Cohort(frame, ["event"], [], "predicted", None, CODES)


def test_aalen_johansen_by_hand_and_events_at_the_horizon_count():
    # 6 subjects: events of interest at 1 and 3, death at 2, censored at 2.5, 4, 5
    c = _cohort([1, 2, 2.5, 3, 4, 5], [1, 2, 0, 1, 0, 0])
    aj = survival.aalen_johansen(c, "event", 0)
    # by hand: t=1 (6 at risk): S=5/6, F1=1/6; t=2 death (5 at risk): S=2/3; t=3 (3 at risk): F1 += 2/3 * 1/3
    assert aj.at(2.9)[0] == pytest.approx(1 / 6)
    assert aj.estimate[-1] == pytest.approx(1 / 6 + 2 / 9)
    rows, _ = survival.cumulative_incidence(_cohort([1, 2, 2.5, 3, 4, 5] * 2, [1, 2, 0, 1, 0, 0] * 2,
                                                    [0] * 6 + [1] * 6), "event", horizon=3.0)
    assert rows[0]["estimate"] == pytest.approx(1 / 6 + 2 / 9)  # the events at exactly t = 3 are in
    assert rows[0]["ci_low"] < rows[0]["estimate"] < rows[0]["ci_high"]
    assert rows[0]["one_minus_km"] > rows[0]["estimate"]  # 1 - KM treats the death as censoring


def test_c_index_direction_and_value_by_brute_force():
    rng = np.random.default_rng(0)
    n = 80
    score = rng.random(n)
    time = rng.exponential(1 / (0.2 + score))  # higher score, earlier event
    code = np.where(rng.random(n) < 0.7, 1, np.where(rng.random(n) < 0.5, 2, 0))
    c = _cohort(time, code)
    c.frame["score"] = score
    got = survival.c_index(c, "event")
    # Harrell's C by brute force: comparable pairs (i has the event, t_i < t_j), concordant if s_i > s_j
    e = code == 1
    num = den = 0.0
    for i in range(n):
        for j in range(n):
            if e[i] and time[i] < time[j]:
                den += 1
                num += 1.0 if score[i] > score[j] else 0.5 if score[i] == score[j] else 0.0
    assert got["estimate"] == pytest.approx(num / den) and got["estimate"] > 0.5
    c.frame["score"] = -score  # a flipped score reads as the mirror image, not as a plausible C
    assert survival.c_index(c, "event")["estimate"] == pytest.approx(1 - num / den)
    assert got["ci_low"] < got["estimate"] < got["ci_high"]


def test_kappa_and_pabak_against_statsmodels_and_sklearn():
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import cohens_kappa

    rng = np.random.default_rng(1)
    a = (rng.random(250) < 0.2).astype(int)
    b = np.where(rng.random(250) < 0.85, a, 1 - a)
    r = agreement(a, b)
    ref = cohens_kappa(np.array(r["table"]))
    assert r["kappa"] == pytest.approx(cohen_kappa_score(a, b)) == pytest.approx(ref.kappa)
    assert r["kappa_ci"] == pytest.approx([ref.kappa_low, ref.kappa_upp])
    assert r["pabak"] == pytest.approx(2 * np.mean(a == b) - 1)


@pytest.mark.parametrize("edit, message", [
    (lambda p, o: o.assign(image_id=o["image_id"].where(o.index != 5, o["image_id"][3])), "CSV lines 5, 7"),
    (lambda p, o: o.assign(time=o["time"].where(o.index != 2, -1.0)), "negative follow-up time on CSV lines 4"),
    (lambda p, o: o.assign(event=o["event"].where(o.index != 8, 7)), "codes other than .* CSV lines 10"),
    (lambda p, o: o.assign(sex="F"), "covariate 'sex' takes a single value"),
    (lambda p, o: o.assign(age=70), "covariate 'age' is constant"),
    (lambda p, o: o.assign(event=np.where(p["predicted"] == 1, 0, o["event"])), "exposed .* no event"),
    (lambda p, o: o.drop(columns=["time"]), "no column 'time'"),
    (lambda p, o: o.assign(time=o["time"].astype(str).where(o.index != 1, "soon")), "not a number on CSV lines 3"),
])
def test_bad_inputs_are_named_by_csv_line(tmp_path, edit, message):
    pred_csv, out_csv = _files(tmp_path, n=200)
    pred, out = pd.read_csv(pred_csv), pd.read_csv(out_csv)
    edit(pred, out).to_csv(out_csv, index=False)
    with pytest.raises(CohortError, match=message):
        load_cohort(pred_csv, out_csv, adjust=["age", "sex"])


def test_unmatched_and_incomplete_rows_are_reported_not_dropped_silently(tmp_path):
    pred_csv, out_csv = _files(tmp_path, n=200)
    out = pd.read_csv(out_csv)
    out.loc[3, "image_id"] = "nobody"
    out.loc[6, "time"] = np.nan
    out.to_csv(out_csv, index=False)
    c = load_cohort(pred_csv, out_csv)
    reasons = {(e["line"], e["reason"].split(" ")[0]) for e in c.excluded}
    assert (5, "no") in reasons and (8, "missing") in reasons  # outcome CSV lines
    assert any(e["file"].endswith("pred.csv") and e["id"] == "img00003" for e in c.excluded)
    assert len(c.frame) == 198


def test_cli_synth_cohort_then_cohort(tmp_path, capsys):
    pred_csv, _ = _files(tmp_path, n=400)
    out_csv = tmp_path / "outcomes.csv"
    assert cli_main(["synth-cohort", "--predictions", str(pred_csv), "--out", str(out_csv), "--seed", "1"]) == 0
    assert cli_main(["synth-cohort", "--predictions", str(pred_csv), "--out", str(out_csv)]) == 2  # no --force
    outcomes = pd.read_csv(out_csv)
    outcomes["reader"] = pd.read_csv(pred_csv)["predicted"]
    outcomes.to_csv(out_csv, index=False)
    rc = cli_main(["cohort", "--predictions", str(pred_csv), "--outcomes", str(out_csv), "--out", str(tmp_path / "c"),
                   "--adjust", "age,sex,bmd_tscore", "--reader", "reader", "--horizon", "5"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "c" / "cohort.json").read_text())
    assert result["n"] == 400 and set(result["events"]["event"]) <= {"0", "1", "2"}
    models = {(r["model"], r["term"]) for r in result["cox"]}
    assert {("unadjusted", "exposure"), ("adjusted", "exposure"), ("unadjusted", "score_sd")} <= models
    assert {r["group"] for r in result["cumulative_incidence"]} == {0, 1}
    assert set(result["c_index"]) >= {"outcome", "score", "estimate", "ci_low", "ci_high"}
    assert result["agreement"]["kappa"] == pytest.approx(1.0)  # the reader column is the finding itself
    for name in ("cohort.xlsx", "km.png", "cumulative_incidence.png", "forest.png", "cohort_report.html",
                 "exclusions.csv"):
        assert (tmp_path / "c" / name).is_file(), name


def test_the_cohort_analysis_imports_without_torch():
    code = ("import sys, vfa.cohort.run, vfa.cohort.synth; "
            "bad = [m for m in ('torch', 'lightning', 'timm') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dates_give_follow_up_in_years_and_several_outcomes_run_each(tmp_path):
    pred_csv, out_csv = _files(tmp_path, n=300, seed=2)
    out = pd.read_csv(out_csv)
    start = pd.Timestamp("2015-01-01")
    out["scan_date"] = start.strftime("%Y-%m-%d")
    out["end_date"] = [(start + pd.Timedelta(days=round(t * 365.25))).strftime("%Y-%m-%d") for t in out["time"]]
    out["hip"] = np.where(np.arange(len(out)) % 2 == 0, out["event"], 0)
    out.drop(columns=["time"]).to_csv(out_csv, index=False)
    c = load_cohort(pred_csv, out_csv, events=("event", "hip"), start="scan_date", end="end_date")
    assert np.abs(c.frame["time"].to_numpy() - out["time"].to_numpy()).max() < 1 / 365
    assert c.outcomes == ["event", "hip"]
    rows = [survival.cox(c, o, adjusted=False)[0][0] for o in c.outcomes]
    assert rows[0]["events"] == int((out["event"] == 1).sum()) and rows[1]["events"] == int((out["hip"] == 1).sum())
    out.loc[4, "end_date"] = "someday"
    out.drop(columns=["time"]).to_csv(out_csv, index=False)
    with pytest.raises(CohortError, match="unreadable dates .* CSV lines 6"):
        load_cohort(pred_csv, out_csv, start="scan_date", end="end_date")


def test_rows_missing_a_covariate_are_left_out_of_every_model_and_listed(tmp_path):
    """A row missing an --adjust or a --base covariate is in exclusions.csv, with the column, and no
    model uses it: the unadjusted and the adjusted Cox rows have the same n (plumbing only: the counts
    are vfa's; the rows left out are the ones blanked here)."""
    pred_csv, out_csv = _files(tmp_path, n=400, seed=3)
    out = pd.read_csv(out_csv)
    out["prior"] = np.arange(len(out)) % 2
    out["age"] = out["age"].astype(object)
    out.loc[[4, 9], "age"] = ""          # --adjust
    out.loc[[9, 20], "sex"] = np.nan     # --adjust, text
    out.loc[[30], "prior"] = np.nan      # --base only
    out.to_csv(out_csv, index=False)
    rc = cli_main(["cohort", "--predictions", str(pred_csv), "--outcomes", str(out_csv), "--out", str(tmp_path / "c"),
                   "--adjust", "age,sex", "--base", "age,prior"])
    assert rc == 0
    result = json.loads((tmp_path / "c" / "cohort.json").read_text())
    ex = pd.read_csv(tmp_path / "c" / "exclusions.csv")
    every = " (left out of every model)"
    assert dict(zip(ex["line"], ex["reason"])) == {
        6: "missing covariate age" + every, 11: "missing covariate age, sex" + every,
        22: "missing covariate sex" + every, 32: "missing covariate prior" + every}
    assert result["n"] == 396 and result["excluded"] == result["excluded_missing_covariate"] == 4
    assert {r["n"] for r in result["cox"] + result["fine_gray"]} == {396}
    assert result["base"] == ["age", "prior"]


def test_figures_for_every_outcome_by_finding_and_score_quartile(tmp_path, monkeypatch):
    """Plumbing only: each outcome gets its cumulative-incidence figures (by finding, by quartile of
    the score, with the numbers at risk of each group), the forest plot has the Cox and Fine–Gray rows
    of every outcome."""
    from vfa.cohort import report, run

    pred_csv, out_csv = _files(tmp_path, n=600, seed=4)
    out = pd.read_csv(out_csv)
    out["hip"] = np.where(np.arange(len(out)) % 2 == 0, out["event"], np.where(out["event"] == 2, 2, 0))
    out.to_csv(out_csv, index=False)
    at_risk, forest = [], []
    monkeypatch.setattr("lifelines.plotting.add_at_risk_counts",
                        lambda *fits, **kw: at_risk.append([len(f.durations) for f in fits]))
    monkeypatch.setattr(run, "forest_figure", lambda rows: forest.append(rows) or report.forest_figure(rows))
    run.analyze(pred_csv, out_csv, tmp_path / "c", events=("event", "hip"), adjust=["age"], bootstrap=5)
    for name in ("cumulative_incidence_event.png", "cumulative_incidence_quartiles_event.png",
                 "cumulative_incidence_hip.png", "cumulative_incidence_quartiles_hip.png", "forest.png"):
        assert (tmp_path / "c" / name).stat().st_size > 10_000, name
    n_finding = int(pd.read_csv(pred_csv)["predicted"].sum())
    assert [600 - n_finding, n_finding] in at_risk and [150, 150, 150, 150] in at_risk
    shown = {(r["outcome"], r["estimate"]) for r in forest[0] if r["term"] == "exposure"}
    assert shown == {(o, e) for o in ("event", "hip") for e in ("Cox HR", "Fine–Gray sHR")}
    html = (tmp_path / "c" / "cohort_report.html").read_text()
    assert "Cumulative incidence by score quartile: hip" in html
