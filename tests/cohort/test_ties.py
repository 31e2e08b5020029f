"""Follow-up in whole days (many tied times of every kind) against R: the Aalen–Johansen cumulative
incidence (vfa.cohort.incidence) against `cmprsk::cuminc` + `timepoints`, and the Cox HR (lifelines,
Efron ties) against `survival::coxph(ties = "efron")`; R through tests/oracles.py and
tests/cohort/survival_r.R."""
import numpy as np
import pytest

from tests.cohort.helpers import day_level_cohort, r_oracle
from vfa.cohort import incidence, survival
from vfa.cohort.data import Cohort

CODES = {"censored": 0, "event": 1, "competing": 2}


@pytest.mark.parametrize("n, seed, unit", [(1500, 0, 1), (600, 7, 30)])
def test_aalen_johansen_matches_cuminc_on_day_level_ties(tmp_path, n, seed, unit):
    """Days, and (denser ties) whole months of 30 days."""
    data = day_level_cohort(n, seed)
    data["time"] = np.ceil(data["time"] / unit).astype(int) * unit
    assert data["time"].duplicated().sum() > n // 10
    # the times: every year, and days where an event and a censoring tie (where jitter could reorder them)
    tied = data.groupby("time")["status"].agg(lambda s: {0, 1} <= set(s))
    times = sorted({365, 730, 1461, 1826, *tied[tied].index[:20].tolist()})
    ref = r_oracle(tmp_path, "cuminc", data[["time", "status"]], ",".join(map(str, times)), "cmprsk")
    aj = incidence.aalen_johansen(data["time"], data["status"])
    est = np.array([aj.at(t)[0] for t in times])
    var = np.array([aj.at(t)[1] for t in times])
    print(f"n {n}: max abs diff of the estimate {np.max(np.abs(est - ref['est'])):.1e}, max rel diff of the "
          f"variance {np.max(np.abs(var / ref['var'] - 1)):.1e}")
    assert np.allclose(est, ref["est"], atol=1e-3, rtol=0)
    assert np.allclose(var, ref["var"], rtol=1e-6)  # cuminc's variance, not a look-alike


def test_events_count_before_censorings_on_the_same_day():
    """Subject 2's event and subject 3's censoring share day 2: the event leaves a risk set of 4."""
    aj = incidence.aalen_johansen([1, 2, 2, 3, 4], [2, 1, 0, 1, 0])
    assert aj.at(2)[0] == pytest.approx(4 / 5 * 1 / 4)
    assert aj.at(3)[0] == pytest.approx(4 / 5 * 1 / 4 + 4 / 5 * 3 / 4 * 1 / 2)
    again = incidence.aalen_johansen([1, 2, 2, 3, 4], [2, 1, 0, 1, 0])
    assert np.array_equal(aj.estimate, again.estimate)  # no randomness


def test_cox_efron_matches_coxph_on_day_level_ties(tmp_path):
    data = day_level_cohort(1500, 2)
    frame = data.assign(id=range(len(data)), exposure=data["finding"], score=data["age"], score_sd=0.0,
                        event=data["status"])
    c = Cohort(frame, ["event"], ["age", "sex"], "predicted", None, CODES)
    for adjusted, covs in ((False, ["finding"]), (True, ["finding", "age", "sex"])):
        ref = r_oracle(tmp_path, "coxph", data, ",".join(covs), "survival")
        rows, _ = survival.cox(c, "event", adjusted)
        hr = np.array([r["hr"] for r in rows])
        high = np.array([r["ci_high"] for r in rows])
        print(f"{covs}: max rel diff HR {np.max(np.abs(hr / np.exp(ref['coef']) - 1)):.1e}")
        assert np.allclose(hr, np.exp(ref["coef"]), rtol=1e-3)
        assert np.allclose(high, np.exp(ref["coef"] + incidence.Z95 * ref["se"]), rtol=1e-3)


@pytest.mark.parametrize("unit", [1, 30])
def test_scaled_schoenfeld_residuals_equal_lifelines_own_on_ties(unit):
    """The proportional-hazards check reads vfa's vectorised residuals; lifelines' own (row by row) are
    the reference, on days and on months (many tied events, Efron's weighting within each tie)."""
    from lifelines.statistics import proportional_hazard_test

    d = day_level_cohort(2000, 3)
    d["time"] = np.ceil(d["time"] / unit) * unit
    data = d[["time", "finding", "age", "sex"]].assign(E=(d["status"] == 1).astype(int))
    cph = survival.fit_cox(data)
    ref = cph.compute_residuals(data, "scaled_schoenfeld")
    ours = survival.scaled_schoenfeld(cph, data)
    assert (ours.index == ref.index).all() and np.allclose(ours.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-10)
    expected = proportional_hazard_test(cph, data, time_transform="rank").summary["p"].to_numpy()
    assert np.allclose(list(survival._ph_check(cph, data).values()), expected, rtol=1e-10)
