"""Fine–Gray (vfa.cohort.finegray) against its oracle, R's cmprsk::crr (tests/cohort/finegray_crr.R),
on synthetic cohorts with follow-up in whole days (many tied times, of every kind), and its rows in
`vfa cohort`."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests import oracles
from tests.cohort.helpers import cohort_files, day_level_cohort
from vfa.cli import main as cli_main
from vfa.cohort import finegray

CRR = Path(__file__).with_name("finegray_crr.R")


def _crr(tmp_path, data: pd.DataFrame, covs: list[str]) -> pd.DataFrame:
    rscript = oracles.rscript("cmprsk")
    data.to_csv(tmp_path / "in.csv", index=False)
    res = subprocess.run([rscript, str(CRR), str(tmp_path / "in.csv"), str(tmp_path / "crr.csv"), ",".join(covs)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    ref = pd.read_csv(tmp_path / "crr.csv")
    assert ref["converged"].all()
    return ref


def _compare(tmp_path, data: pd.DataFrame, covs: list[str]) -> tuple[float, float]:
    """The largest relative differences (sHR, robust SE) between vfa and crr, printed for the record."""
    ref = _crr(tmp_path, data, covs)
    fit = finegray.fit(data["time"], data["status"], data[covs].to_numpy(float))
    assert fit.converged
    hr = np.max(np.abs(np.exp(fit.coef) / np.exp(ref["coef"].to_numpy()) - 1))
    se = np.max(np.abs(fit.se / ref["se"].to_numpy() - 1))
    print(f"{covs}: n {len(data)}, {data['time'].nunique()} distinct days; max rel diff sHR {hr:.2e}, SE {se:.2e}")
    return hr, se


@pytest.mark.parametrize("covs, n, seed", [(["finding"], 800, 0), (["finding"], 2000, 1),
                                           (["finding", "age", "sex"], 1500, 2), (["finding", "age", "sex"], 600, 3)])
def test_fine_gray_matches_crr(tmp_path, covs, n, seed):
    data = day_level_cohort(n, seed)
    assert data["time"].duplicated().sum() > n // 10 and set(data["status"]) == {0, 1, 2}  # ties, all three codes
    hr, se = _compare(tmp_path, data, covs)
    assert hr < 1e-3 and se < 1e-2


def test_fine_gray_matches_crr_on_dense_ties_and_censoring_at_zero(tmp_path):
    """25 distinct times for 600 subjects (events, deaths and censorings tied at each) and censorings
    at time 0, where crr reads the censoring distribution at 0 itself rather than just before it
    (ignoring that moves the sHR by ~1e-4 here: the tolerance is tighter than the issue's to see it)."""
    rng = np.random.default_rng(4)
    n = 600
    data = pd.DataFrame({"time": rng.integers(0, 25, n), "status": rng.choice([0, 1, 2], n, p=[0.4, 0.3, 0.3]),
                         "finding": rng.integers(0, 2, n), "age": np.round(rng.normal(70, 8, n), 1),
                         "sex": rng.integers(0, 2, n)})
    data.loc[:5, "time"] = 0
    data.loc[:2, "status"] = 0
    hr, se = _compare(tmp_path, data, ["finding", "age", "sex"])
    assert hr < 1e-5 and se < 1e-5


def test_the_order_of_the_rows_does_not_matter():
    data = day_level_cohort(500, 5)
    x = data[["finding", "age", "sex"]].to_numpy(float)
    a = finegray.fit(data["time"], data["status"], x)
    perm = np.random.default_rng(0).permutation(len(data))
    b = finegray.fit(data["time"].to_numpy()[perm], data["status"].to_numpy()[perm], x[perm])
    assert np.allclose(a.coef, b.coef, rtol=1e-9) and np.allclose(a.var, b.var, rtol=1e-9)


def test_bad_input_is_refused():
    with pytest.raises(finegray.FineGrayError, match="no event of interest"):
        finegray.fit([1, 2, 3], [0, 2, 0], [[0.0], [1.0], [0.0]])
    with pytest.raises(finegray.FineGrayError, match="status codes"):
        finegray.fit([1, 2, 3], [0, 1, 3], [[0.0], [1.0], [0.0]])
    with pytest.raises(finegray.FineGrayError, match="singular"):
        finegray.fit([1, 2, 3, 4], [1, 2, 1, 0], [[1.0], [1.0], [1.0], [1.0]])


def _run_cohort(tmp_path, pred_csv, out_csv, name) -> dict:
    rc = cli_main(["cohort", "--predictions", str(pred_csv), "--outcomes", str(out_csv), "--out", str(tmp_path / name),
                   "--adjust", "age,sex,bmd_tscore"])
    assert rc == 0
    return json.loads((tmp_path / name / "cohort.json").read_text())


def test_vfa_cohort_writes_fine_gray_rows_and_none_without_competing_events(tmp_path):
    pred_csv, out_csv = cohort_files(tmp_path, n=600, seed=6)
    result = _run_cohort(tmp_path, pred_csv, out_csv, "c")
    rows = result["fine_gray"]
    assert {(r["model"], r["term"]) for r in rows} >= {("unadjusted", "exposure"), ("adjusted", "exposure"),
                                                        ("unadjusted", "score_sd"), ("adjusted", "score_sd"),
                                                        ("adjusted", "age")}
    assert all(set(r) == set(result["cox"][0]) for r in rows)  # the keys of the Cox rows
    # the unadjusted finding row is crr's fit of the finding alone, on the cohort's time in years
    out = pd.read_csv(out_csv)
    data = pd.DataFrame({"time": out["time"], "status": out["event"], "finding": pd.read_csv(pred_csv)["predicted"]})
    ref = _crr(tmp_path, data, ["finding"]).iloc[0]
    row = next(r for r in rows if (r["model"], r["term"]) == ("unadjusted", "exposure"))
    assert row["hr"] == pytest.approx(np.exp(ref["coef"]), rel=1e-3)
    assert row["ci_high"] == pytest.approx(np.exp(ref["coef"] + finegray.Z95 * ref["se"]), rel=1e-3)
    sheet = pd.read_excel(tmp_path / "c" / "cohort.xlsx", sheet_name="cox")
    assert set(sheet["estimate"]) == {"Cox HR", "Fine–Gray sHR"}
    assert "Fine–Gray sHR" in (tmp_path / "c" / "cohort_report.html").read_text()
    assert not any("Fine–Gray" in w for w in result["warnings"])

    out.assign(event=out["event"].replace(2, 0)).to_csv(out_csv, index=False)  # deaths as censored
    result = _run_cohort(tmp_path, pred_csv, out_csv, "no_deaths")
    assert result["fine_gray"] == [] and result["cox"]
    assert any("no competing event" in w for w in result["warnings"])
