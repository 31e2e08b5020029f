"""The added value of the finding over the clinical model (vfa.cohort.added_value) against second
implementations: the Cox models and their log-likelihoods refitted by statsmodels' PHReg and R's
coxph, the C-indices and AUC of those refits by scikit-survival and lifelines, the paired bootstrap
redone on materialised resamples, and the NRI counted subject by subject."""
import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from lifelines.utils import concordance_index
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw, cumulative_dynamic_auc
from sksurv.util import Surv

from tests.cohort.helpers import cohort_files, r_oracle
from vfa.cli import main as cli_main
from vfa.cohort.added_value import added_value
from vfa.cohort.data import CohortError, load_cohort

BASE = ["age", "sex", "bmd_tscore", "prior_fracture", "glucocorticoids"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """1,500 synthetic subjects (vfa synth-cohort's draw) and their added-value rows, 40 resamples."""
    tmp = tmp_path_factory.mktemp("av")
    c = load_cohort(*cohort_files(tmp, n=1500, seed=8), base=BASE)
    return c, added_value(c, "event", 5.0, (0.1, 0.2), replicates=40, seed=3, log=lambda _: None)


def _phreg(c, cols):
    d = c.frame
    return sm.PHReg(d["time"].to_numpy(), d[cols].to_numpy(float), status=(d["event"] == 1).to_numpy(int),
                    ties="efron").fit()


def test_c_index_auc_and_lr_test_against_statsmodels_sksurv_and_lifelines(cohort):
    c, rows = cohort
    t, e = c.frame["time"].to_numpy(), (c.frame["event"] == 1).to_numpy()
    y = Surv.from_arrays(e, t)
    fits = {r["model"]: _phreg(c, r["terms"].split(" + ")) for r in rows}
    for r in rows:
        fit = fits[r["model"]]
        lp = c.frame[r["terms"].split(" + ")].to_numpy(float) @ fit.params
        assert r["harrell_c"] == pytest.approx(concordance_index_censored(e, t, lp)[0], abs=1e-6)
        assert r["harrell_c"] == pytest.approx(concordance_index(t, -lp, e), abs=1e-6)
        assert r["uno_c"] == pytest.approx(concordance_index_ipcw(y, y, lp, tau=5.0)[0], abs=1e-6)
        assert r["auc"] == pytest.approx(cumulative_dynamic_auc(y, y, lp, [5.0])[0][0], abs=1e-6)
        assert r["loglik"] == pytest.approx(fit.llf, rel=1e-7)
        if r["model"] != "base":
            lr = 2 * (fit.llf - fits["base"].llf)
            assert r["lr_chi2"] == pytest.approx(lr, rel=1e-5) and r["lr_df"] == 1
            assert r["delta_harrell_c"] == pytest.approx(r["harrell_c"] - rows[0]["harrell_c"])
    finding = rows[1]
    assert finding["lr_p"] < 1e-3 and finding["delta_harrell_c_ci_low"] > 0  # the planted HR 1.85 adds value


def test_lr_statistic_against_r_coxph(cohort, tmp_path):
    c, rows = cohort
    data = c.frame.rename(columns={"sex=M": "sexM"}).assign(status=c.frame["event"].astype(int))
    logliks = {}
    for r in rows[:2]:
        covs = [v.replace("sex=M", "sexM") for v in r["terms"].split(" + ")]
        logliks[r["model"]] = r_oracle(tmp_path, "coxph", data[["time", "status", *covs]], ",".join(covs),
                                       "survival")["loglik"].iloc[0]
    print(f"LR: vfa {rows[1]['lr_chi2']:.4f}, R coxph {2 * (logliks['base + finding'] - logliks['base']):.4f}")
    assert rows[1]["lr_chi2"] == pytest.approx(2 * (logliks["base + finding"] - logliks["base"]), rel=1e-4)


def test_paired_bootstrap_equals_materialised_resamples(cohort):
    """The CI of the difference: the same 40 resamples (seed 3) drawn as row indices, each model's
    Harrell's C by sksurv on the resampled rows, the difference taken within each resample."""
    c, rows = cohort
    t, e = c.frame["time"].to_numpy(), (c.frame["event"] == 1).to_numpy()
    lps = [c.frame[r["terms"].split(" + ")].to_numpy(float) @ _phreg(c, r["terms"].split(" + ")).params
           for r in rows[:2]]
    rng = np.random.default_rng(3)
    diffs = []
    for _ in range(40):
        i = rng.integers(0, len(t), len(t))
        base, full = (concordance_index_censored(e[i], t[i], lp[i])[0] for lp in lps)
        diffs.append(full - base)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    assert rows[1]["delta_harrell_c_ci_low"] == pytest.approx(lo, abs=1e-5)
    assert rows[1]["delta_harrell_c_ci_high"] == pytest.approx(hi, abs=1e-5)


def test_nri_counted_subject_by_subject(cohort, tmp_path):
    """Categories from R's predicted risk at 5 years (survfit of coxph, Efron), events and non-events by
    their status at 5 years, counted in a loop."""
    c, rows = cohort
    d = c.frame.rename(columns={"sex=M": "sexM"}).assign(status=c.frame["event"].astype(int))
    risks = []
    for r in rows[:2]:
        covs = [v.replace("sex=M", "sexM") for v in r["terms"].split(" + ")]
        risks.append(r_oracle(tmp_path, "risk", d[["time", "status", *covs]], ",".join(covs) + "@5",
                              "survival")["risk"].to_numpy())
    up = down = n_ev = up_ne = down_ne = n_ne = 0
    for k in range(len(d)):
        t, code = d["time"].iloc[k], d["event"].iloc[k]
        before, after = (int(np.digitize(risk[k], [0.1, 0.2])) for risk in risks)
        if t <= 5.0 and code == 1:
            n_ev, up, down = n_ev + 1, up + (after > before), down + (after < before)
        elif t > 5.0 or code == 2:
            n_ne, up_ne, down_ne = n_ne + 1, up_ne + (after > before), down_ne + (after < before)
    assert rows[1]["nri_events"] == pytest.approx((up - down) / n_ev, abs=1e-12)
    assert rows[1]["nri_nonevents"] == pytest.approx((down_ne - up_ne) / n_ne, abs=1e-12)
    assert rows[1]["nri"] == pytest.approx(rows[1]["nri_events"] + rows[1]["nri_nonevents"])


def test_vfa_cohort_base_writes_the_table_everywhere(tmp_path):
    pred_csv, out_csv = cohort_files(tmp_path, n=500, seed=9)
    args = ["cohort", "--predictions", str(pred_csv), "--outcomes", str(out_csv), "--out", str(tmp_path / "c"),
            "--base", ",".join(BASE), "--bootstrap", "20", "--seed", "5", "--risk-cuts", "0.15,0.3"]
    assert cli_main(args) == 0
    result = json.loads((tmp_path / "c" / "cohort.json").read_text())
    rows = result["added_value"]
    assert [r["model"] for r in rows] == ["base", "base + finding", "base + score"]
    assert rows[0]["delta_uno_c"] is None and rows[1]["risk_cuts"] == "0.15,0.3" and rows[1]["bootstrap"] == 20
    assert result["bootstrap"] == 20 and "20 resamples, seed 5" in result["methods"]
    assert result["c_index"]["method"] == "Harrell, percentile bootstrap (20, seed 5)"
    sheet = pd.read_excel(tmp_path / "c" / "cohort.xlsx", sheet_name="added_value")
    assert sheet["harrell_c"].tolist() == pytest.approx([r["harrell_c"] for r in rows])
    html = (tmp_path / "c" / "cohort_report.html").read_text()
    assert "Added value over the clinical model" in html and "Δ AUC" in html and "NRI at 0.15,0.3" in html
    assert cli_main([*args[:-2], "--risk-cuts", "0.3,0.1", "--force"]) == 2  # one clear line, no traceback


def test_risk_cuts_and_bootstrap_are_checked(tmp_path):
    from vfa.cohort.run import analyze

    pred_csv, out_csv = cohort_files(tmp_path, n=200, seed=1)
    with pytest.raises(CohortError, match="--risk-cuts"):
        analyze(pred_csv, out_csv, tmp_path / "c", risk_cuts=(0.2, 1.5))
    with pytest.raises(CohortError, match="--bootstrap"):
        analyze(pred_csv, out_csv, tmp_path / "c", bootstrap=0)


def test_a_base_model_that_cannot_be_estimated_leaves_the_rows_empty_with_the_reason(tmp_path):
    from vfa.cohort.run import analyze

    pred_csv, out_csv = cohort_files(tmp_path, n=90, seed=1)
    result = analyze(pred_csv, out_csv, tmp_path / "c", base=BASE, bootstrap=5, log=lambda _: None)
    rows = result["added_value"]
    assert all(r["harrell_c"] is None and r["not_estimable"].startswith("too few events") for r in rows)
    assert any(w.startswith("added value for 'event' not estimable") for w in result["warnings"])
    assert "too few events" in (tmp_path / "c" / "cohort_report.html").read_text()
