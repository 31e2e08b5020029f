"""vfa.cohort.concordance (Harrell's C, Uno's C, cumulative/dynamic AUC for any row weights) against
scikit-survival (the definitions it follows), lifelines' Harrell's C and R's survival::concordance
(Uno's C, timewt "n/G2"), on follow-up with tied times and tied scores; a bootstrap replicate as
row weights equals the statistic of the materialised resample."""
import numpy as np
import pytest
from lifelines.utils import concordance_index
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw, cumulative_dynamic_auc
from sksurv.util import Surv

from tests.cohort.helpers import r_oracle
from vfa.cohort.concordance import Concordance, DynamicAUC, censoring_survival


def _data(n: int, seed: int):
    """Months of follow-up (many tied times, events and censorings tied), scores on a 0.01 grid (ties)."""
    rng = np.random.default_rng(seed)
    s = np.round(rng.random(n), 2)
    t = np.ceil(rng.exponential(1 / (0.1 + 0.15 * s)) * 12) / 12
    e = rng.random(n) < 0.5
    return t, e, s


def _uno(t, e, s, tau, weights=None):
    c = Concordance(t, e, s)
    g = censoring_survival(t, e, c.time, weights)
    return c.c_index(weights, np.where(c.time < tau, 1 / g ** 2, 0.0))


def _auc(t, e, s, at, weights=None):
    a = DynamicAUC(t, e, s, at)
    return a.value(1 / censoring_survival(t, e, t[a.cases], weights), weights)


@pytest.mark.parametrize("n, seed", [(60, 0), (2500, 1)])
def test_equal_to_sksurv_and_lifelines(n, seed):
    t, e, s = _data(n, seed)
    y = Surv.from_arrays(e, t)
    harrell = Concordance(t, e, s).c_index()
    assert harrell == pytest.approx(concordance_index_censored(e, t, s)[0], abs=1e-12)
    assert harrell == pytest.approx(concordance_index(t, -s, e), abs=1e-12)  # a second implementation
    assert _uno(t, e, s, 4.0) == pytest.approx(concordance_index_ipcw(y, y, s, tau=4.0)[0], abs=1e-12)
    assert _auc(t, e, s, 3.0) == pytest.approx(cumulative_dynamic_auc(y, y, s, [3.0])[0][0], abs=1e-12)


def test_row_weights_are_the_materialised_bootstrap_resample():
    t, e, s = _data(800, 2)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, len(t), len(t))
    m = np.bincount(idx, minlength=len(t))
    y = Surv.from_arrays(e[idx], t[idx])
    assert Concordance(t, e, s).c_index(m) == pytest.approx(concordance_index_censored(e[idx], t[idx], s[idx])[0],
                                                            abs=1e-12)
    assert _uno(t, e, s, 4.0, m) == pytest.approx(concordance_index_ipcw(y, y, s[idx], tau=4.0)[0], abs=1e-12)
    assert _auc(t, e, s, 3.0, m) == pytest.approx(cumulative_dynamic_auc(y, y, s[idx], [3.0])[0][0], abs=1e-12)


def test_uno_c_near_r_concordance_n_over_g2(tmp_path):
    """R's survival::concordance(timewt = "n/G2", ymax = tau) is Uno's C with G read just before each
    event time and its own tie conventions, so it agrees to about 1e-4 (3e-5 here), not exactly (printed)."""
    import pandas as pd

    rng = np.random.default_rng(4)
    n = 1500
    s = rng.random(n)
    t = np.ceil(rng.exponential(1 / (0.05 + 0.15 * s)) * 365)
    c = rng.uniform(365, 3000, n)
    e = t <= c
    t = np.minimum(t, np.ceil(c))
    ref = r_oracle(tmp_path, "uno", pd.DataFrame({"time": t, "status": e.astype(int), "score": s}), "1500",
                   "survival")["concordance"].iloc[0]
    ours = _uno(t, e, s, 1500.0)
    print(f"Uno's C: vfa {ours:.5f}, R concordance n/G2 {ref:.5f}, diff {ours - ref:.1e}")
    assert ours == pytest.approx(ref, abs=5e-4)


def test_censoring_km_equals_sksurv_censoring_distribution():
    from sksurv.nonparametric import CensoringDistributionEstimator

    t, e, _ = _data(1000, 5)
    at = np.unique(t)[:-1]
    ref = CensoringDistributionEstimator().fit(Surv.from_arrays(e, t)).predict_proba(at)
    assert np.allclose(censoring_survival(t, e, at), ref, rtol=0, atol=1e-14)
    idx = np.random.default_rng(6).integers(0, len(t), len(t))
    at = np.unique(t[idx])[:-1]
    ref = CensoringDistributionEstimator().fit(Surv.from_arrays(e[idx], t[idx])).predict_proba(at)
    assert np.allclose(censoring_survival(t, e, at, np.bincount(idx, minlength=len(t))), ref, rtol=0, atol=1e-14)
