"""Hazard ratios that cannot be estimated are left empty with a reason (vfa.cohort.estimable): separation
against its definition (statsmodels' Cox partial likelihood rising for ever along the term, and a
brute-force risk-set scan for Fine–Gray), too few events per term, non-convergence; and `vfa cohort` on
a 9-subject cohort says so in one line instead of printing HR 1e10."""
import json
import re
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from vfa.cli import main as cli_main
from vfa.cohort import estimable, survival
from vfa.cohort.data import Cohort
from vfa.cohort.report import _plain_ticks, forest_label, outcome_label

CODES = {"censored": 0, "event": 1, "competing": 2}

# 9 subjects, 3 fractures (two in the 3 exposed, the third after every exposed subject has left), one death
TINY_PRED = """image_id,raw,predicted
img0,0.26,0\nimg1,0.30,0\nimg2,0.81,1\nimg3,0.09,0\nimg4,0.60,1\nimg5,0.73,1\nimg6,0.19,0\nimg7,0.06,0\nimg8,0.27,0
"""
TINY_OUT = """image_id,time,event,age,sex,bmd_tscore
img0,7.6439,0,73.3,F,-1.37\nimg1,6.9087,0,68.3,F,-2.39\nimg2,3.7286,1,73.1,F,-1.26\nimg3,8.4133,1,54.9,F,-1.31
img4,1.5095,1,88.6,F,-1.77\nimg5,3.2263,2,84.0,F,-1.69\nimg6,7.1743,0,69.7,F,-2.51\nimg7,5.4091,0,77.4,M,-0.72
img8,5.6593,0,74.0,F,0.56
"""


def _statsmodels_separates(time, event, x) -> bool:
    """The definition: the Cox partial likelihood does not fall along +x or -x, however far (statsmodels'
    own likelihood; integer x with differences >= 1, so a single violation costs more than 200 - the
    log of every risk set together could win back)."""
    import statsmodels.api as sm

    model = sm.PHReg(time, x[:, None].astype(float), status=event.astype(int), ties="efron")
    at0 = model.loglike(np.zeros(1))
    return any(model.loglike(np.array([d * 200.0])) >= at0 - 1e-9 for d in (1, -1))


@pytest.mark.parametrize("seed", range(40))
def test_separation_is_the_monotone_cox_likelihood(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 12))
    time = rng.permutation(n).astype(float) + 1  # distinct times: Efron and Breslow agree
    event = rng.random(n) < 0.5
    event[rng.integers(n)] = True
    x = rng.integers(0, int(rng.integers(2, 4)), n)  # binary or 3-level
    assert bool(estimable.separated(time, event, x, ["x"])) == _statsmodels_separates(time, event, x)


def _brute_force(time, event, x, stays) -> bool:
    up = down = True
    for i in np.flatnonzero(event):
        at_risk = (time >= time[i]) | (stays & (time < time[i]))
        up &= x[i] >= x[at_risk].max()
        down &= x[i] <= x[at_risk].min()
    return up or down


def test_fine_gray_risk_sets_keep_the_competing_events():
    mattered = 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(4, 10))
        time = rng.integers(1, 6, n).astype(float)  # ties of every kind
        status = rng.integers(0, 3, n)
        status[rng.integers(n)] = 1
        x = rng.integers(0, 2, n).astype(float)
        got = bool(estimable.separated(time, status == 1, x, ["x"], stays=status == 2))
        assert got == _brute_force(time, status == 1, x, status == 2), seed
        mattered += got != bool(estimable.separated(time, status == 1, x, ["x"]))
    assert mattered >= 5  # cases where an earlier death kept at risk decides it


def test_too_few_events_per_term():
    assert estimable.too_few_events(9, 1) and estimable.too_few_events(39, 4)
    assert estimable.too_few_events(10, 1) is None and estimable.too_few_events(40, 4) is None
    assert "4 terms" in estimable.too_few_events(12, 4)


def _frame(time, code, exposure, extra) -> Cohort:
    frame = pd.DataFrame({"id": range(len(time)), "time": time, "event": code, "exposure": exposure,
                          "score": extra, "score_sd": extra, "x2": extra})
    return Cohort(frame, ["event"], ["x2"], "predicted", None, CODES)


def test_separation_on_a_combination_is_caught_as_no_convergence():
    # earlier time = higher x1 + x2, so every event tops its risk set on the sum, but neither term alone does
    rng = np.random.default_rng(0)
    time = np.arange(1, 61, dtype=float)
    noise = rng.normal(0, 30, 60)
    x1, x2 = -time / 2 + noise, -time / 2 - noise
    code = np.where(time <= 45, np.where(rng.random(60) < 0.8, 1, 0), 2)  # deaths last: none stays at risk early
    c = _frame(time, code, x1, x2)
    assert not estimable.separated(time, code == 1, np.c_[x1, x2], ["x1", "x2"], code == 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing of lifelines' or numpy's reaches the user
        rows, ph = survival.cox(c, "event", adjusted=True)
        fg = survival.fine_gray(c, "event", adjusted=True)
    for r in rows + fg:
        assert r["hr"] is None and r["ci_high"] is None and "converge" in r["not_estimable"]
    assert ph == {}


def test_a_well_posed_model_has_no_reason(tmp_path):
    rng = np.random.default_rng(1)
    n = 300
    exposure = (rng.random(n) < 0.4).astype(int)
    time = rng.exponential(1 / (0.2 * np.exp(0.7 * exposure)))
    code = np.where(time < 3, 1, 0)
    c = _frame(np.minimum(time, 3), code, exposure, rng.normal(size=n))
    rows, ph = survival.cox(c, "event", adjusted=False)
    assert rows[0]["not_estimable"] is None and 1 < rows[0]["hr"] < 4 and ph


def test_vfa_cohort_on_nine_subjects_says_not_estimable_once(tmp_path, capsys):
    (tmp_path / "pred.csv").write_text(TINY_PRED)
    (tmp_path / "out.csv").write_text(TINY_OUT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rc = cli_main(["cohort", "--predictions", str(tmp_path / "pred.csv"), "--outcomes", str(tmp_path / "out.csv"),
                       "--out", str(tmp_path / "c"), "--adjust", "age,sex,bmd_tscore"])
    said = capsys.readouterr()
    err = said.out + said.err
    assert rc == 0, err
    assert err.count("HR not estimable: 3 events of 'event' among 9 subjects") == 1
    assert "Warning" not in err and "stackexchange" not in err  # no lifelines or numpy warnings
    result = json.loads((tmp_path / "c" / "cohort.json").read_text())
    assert result["warnings"][0].startswith("HR not estimable: 3 events")
    for r in result["cox"] + result["fine_gray"]:
        assert r["hr"] is None and r["ci_low"] is None and r["p"] is None and "too few events (3" in r["not_estimable"]
    unadjusted = next(r for r in result["cox"] if r["terms"] == "exposure")
    assert "separation on exposure" in unadjusted["not_estimable"]  # the third event outlives every exposed subject
    html = re.sub(r"<img[^>]*>", "", (tmp_path / "c" / "cohort_report.html").read_text())  # the text, not the PNGs
    assert "None" not in html and "e+1" not in html and "HR not estimable" in html
    subjects = pd.read_excel(tmp_path / "c" / "cohort.xlsx", sheet_name="subjects")
    assert list(subjects.columns) == ["outcome", "censored (code 0)", "fracture (code 1)", "death, competing (code 2)"]
    assert subjects.iloc[0, 1:].tolist() == [5, 3, 1]


def test_forest_ticks_are_plain_numbers_and_models_are_named_by_their_terms():
    fig, ax = plt.subplots()
    ax.set_xscale("log")
    _plain_ticks(ax, [0.3, 3.5])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.25", "0.5", "1", "2", "4"]
    assert ax.get_xlim()[0] < 0.3 and ax.get_xlim()[1] > 3.5
    _plain_ticks(ax, [1e-4, 1e4])  # a wide CI: fewer ticks, 1 still one of them
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "1" in labels and len(labels) <= 10
    plt.close(fig)
    a = forest_label({"outcome": "event", "terms": "exposure + age + sex=M", "estimate": "Cox HR"})
    b = forest_label({"outcome": "event", "terms": "score_sd + age + sex=M", "estimate": "Cox HR"})
    assert a == "event: exposure, adjusted for age, sex=M (Cox HR)" and a != b
    assert forest_label({"outcome": "hip", "terms": "exposure"}) == "hip: exposure, unadjusted"
    assert outcome_label("event") == "fracture" and outcome_label("hip") == "fracture ('hip')"
