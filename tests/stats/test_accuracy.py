"""Every interval and test against an independent computation (statsmodels, sklearn, brute force,
bootstrap) and against published worked examples where one exists."""
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score
from statsmodels.stats.contingency_tables import Table2x2
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.proportion import proportion_confint

from vfa.stats import accuracy as stats


# --- Wilson --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7, 30, 263, 1000])
def test_wilson_matches_statsmodels(n):
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        lo, hi = stats.wilson(k, n)
        ref = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert (lo, hi) == pytest.approx(ref, abs=1e-12), (k, n)


def test_wilson_published_newcombe_1998():
    # Newcombe (1998) Stat Med 17:857, Table I, method 3 (score, no continuity correction)
    for (k, n), ref in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605),
                        (0, 20): (0.0, 0.1611), (1, 29): (0.0061, 0.1718)}.items():
        assert stats.wilson(k, n) == pytest.approx(ref, abs=5e-5)


def test_wilson_empty_is_nan():
    assert all(math.isnan(v) for v in stats.wilson(0, 0))


# --- likelihood ratios ---------------------------------------------------------------------------

@pytest.mark.parametrize("tp,fp,fn,tn", [(231, 32, 27, 54), (40, 5, 10, 95), (3, 1, 2, 9)])
def test_lr_log_method_matches_katz_risk_ratio(tp, fp, fn, tn):
    """LR+ is the risk ratio of a positive test (diseased vs not); the log method is Katz's."""
    lr = stats.likelihood_ratios(tp, fp, fn, tn)
    pos, neg = Table2x2(np.array([[tp, fn], [fp, tn]])), Table2x2(np.array([[fn, tp], [tn, fp]]))
    assert lr["plr"] == pytest.approx(pos.riskratio)
    assert lr["plr_ci"] == pytest.approx(pos.riskratio_confint(alpha=0.05), rel=1e-10)
    assert lr["nlr"] == pytest.approx(neg.riskratio)
    assert lr["nlr_ci"] == pytest.approx(neg.riskratio_confint(alpha=0.05), rel=1e-10)
    assert lr["notes"] == []


def test_lr_hand_computed_example():
    # Drum & Christacopoulos liver scan data (Altman & Bland 1994): Sn 231/258, Sp 54/86.
    lr = stats.likelihood_ratios(231, 32, 27, 54)
    se = math.sqrt(1 / 231 - 1 / 258 + 1 / 32 - 1 / 86)
    assert lr["plr"] == pytest.approx((231 / 258) / (32 / 86))
    assert lr["plr_ci"] == pytest.approx((lr["plr"] * math.exp(-1.959964 * se), lr["plr"] * math.exp(1.959964 * se)))
    assert lr["plr_ci"] == pytest.approx((1.823, 3.176), abs=1e-3)
    assert lr["nlr_ci"] == pytest.approx((0.1126, 0.2467), abs=1e-4)


def test_lr_zero_cells_and_single_class_are_reported_not_raised():
    lr = stats.likelihood_ratios(10, 0, 2, 8)  # Sp = 1: LR+ infinite, no interval
    assert lr["plr"] == math.inf and all(math.isnan(v) for v in lr["plr_ci"])
    assert any("LR+ CI undefined" in n for n in lr["notes"])
    lr = stats.likelihood_ratios(0, 0, 0, 8)
    assert math.isnan(lr["plr"]) and math.isnan(lr["nlr"]) and lr["notes"]


# --- DeLong --------------------------------------------------------------------------------------

def _delong_bruteforce(y, scores):
    """DeLong et al. (1988) from its definition: psi(x, y) = 1 if x > y, 1/2 if equal; O(m n)."""
    y = np.asarray(y).astype(int)
    scores = np.atleast_2d(scores)
    aucs, v10s, v01s = [], [], []
    for s in scores:
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    m, n = (y == 1).sum(), (y == 0).sum()
    cov = np.atleast_2d(np.cov(np.array(v10s))) / m + np.atleast_2d(np.cov(np.array(v01s))) / n
    return np.array(aucs), cov


def _data(n=120, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    a = rng.normal(y * 1.0, 1.0)
    b = 0.6 * a + rng.normal(y * 0.6, 0.8)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return y, a, b


@pytest.mark.parametrize("ties", [False, True])
def test_delong_matches_definition_and_sklearn(ties):
    y, a, b = _data(ties=ties)
    auc, cov = stats.delong_covariance(y, np.vstack([a, b]))
    ref_auc, ref_cov = _delong_bruteforce(y, np.vstack([a, b]))
    assert auc == pytest.approx(ref_auc, abs=1e-12)
    assert auc[0] == pytest.approx(roc_auc_score(y, a))
    assert cov == pytest.approx(ref_cov, abs=1e-12)


def test_delong_se_agrees_with_bootstrap():
    y, a, _ = _data(n=200, seed=1)
    res = stats.delong_ci(y, a)
    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    boots = []
    for _ in range(1000):  # stratified, as DeLong conditions on the class sizes
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        boots.append(roc_auc_score(y[idx], a[idx]))
    assert res["auc_se"] == pytest.approx(np.std(boots, ddof=1), rel=0.12)
    lo, hi = res["auc_ci"]
    assert lo < res["auc"] < hi and hi - lo == pytest.approx(2 * 1.959964 * res["auc_se"])


def test_delong_published_hanley_mcneil_1982():
    # Hanley & McNeil (1982) Radiology 143:29, Table 1: CT ratings 1-5 of 58 normal and 51 abnormal
    # images; published AUC 0.893 and SE 0.032 (their exponential approximation, which DeLong's
    # nonparametric SE approaches).
    neg = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    pos = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    res = stats.delong_ci(np.r_[np.zeros(58), np.ones(51)], np.r_[neg, pos])
    assert res["auc"] == pytest.approx(0.893, abs=5e-4)
    assert res["auc_se"] == pytest.approx(0.032, abs=0.002)


def test_delong_undefined_cases():
    assert math.isnan(stats.delong_ci([1, 1, 1], [0.2, 0.5, 0.9])["auc"])
    one = stats.delong_ci([0, 0, 1], [0.1, 0.2, 0.9])
    assert one["auc"] == 1.0 and math.isnan(one["auc_ci"][0]) and one["notes"]
    perfect = stats.delong_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert perfect["auc_ci"] == (1.0, 1.0) and "degenerate" in perfect["notes"][0]


def test_delong_paired_test():
    y, a, b = _data(n=150, seed=2)
    res = stats.delong_paired(y, a, b)
    aucs, cov = _delong_bruteforce(y, np.vstack([a, b]))
    se = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert res["diff"] == pytest.approx(aucs[0] - aucs[1])
    assert res["diff_se"] == pytest.approx(se)
    assert res["p"] == pytest.approx(2 * norm.sf(abs(res["diff"] / se)))
    # bootstrap SE of the paired difference
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(600):
        idx = rng.integers(0, y.size, y.size)
        if y[idx].min() == y[idx].max():
            continue
        diffs.append(roc_auc_score(y[idx], a[idx]) - roc_auc_score(y[idx], b[idx]))
    assert res["diff_se"] == pytest.approx(np.std(diffs, ddof=1), rel=0.15)
    same = stats.delong_paired(y, a, a)
    assert same["diff"] == 0 and same["p"] == 1.0


# --- McNemar -------------------------------------------------------------------------------------

@pytest.mark.parametrize("b,c", [(0, 0), (1, 5), (7, 2), (12, 12), (30, 12), (40, 61)])
def test_mcnemar_matches_statsmodels(b, c):
    res = stats.mcnemar(b, c)
    table = np.array([[10, b], [c, 10]])
    ref = sm_mcnemar(table, exact=(b + c) < 25, correction=True)
    assert res["p"] == pytest.approx(ref.pvalue, abs=1e-12)
    assert stats.mcnemar(b, c, exact=True)["p"] == pytest.approx(sm_mcnemar(table, exact=True).pvalue)


# --- thresholds ----------------------------------------------------------------------------------

def test_parse_threshold():
    assert stats.parse_threshold("0.5") == ("fixed", 0.5)
    assert stats.parse_threshold(0.3) == ("fixed", 0.3)
    assert stats.parse_threshold("Youden") == ("youden", None)
    assert stats.parse_threshold("sensitivity=0.90") == ("sensitivity", 0.9)
    assert stats.parse_threshold("specificity=0.9") == ("specificity", 0.9)
    for bad in ("1.5", "sens=0.9", "sensitivity=", "abc", "sensitivity=2"):
        with pytest.raises(ValueError):
            stats.parse_threshold(bad)


def _sn_sp(y, p, t):
    pred = p >= t
    return pred[y == 1].mean(), (~pred)[y == 0].mean()


def test_choose_threshold_against_brute_force():
    y, a, _ = _data(n=90, seed=3)
    p = 1 / (1 + np.exp(-a))
    cands = np.unique(p)
    j = np.array([sum(_sn_sp(y, p, t)) - 1 for t in cands])
    t = stats.choose_threshold(y, p, "youden")
    assert sum(_sn_sp(y, p, t)) - 1 == pytest.approx(j.max())
    t = stats.choose_threshold(y, p, "sensitivity=0.9")
    assert _sn_sp(y, p, t)[0] >= 0.9
    assert t == max(c for c in cands if _sn_sp(y, p, c)[0] >= 0.9)
    t = stats.choose_threshold(y, p, "specificity=0.8")
    assert _sn_sp(y, p, t)[1] >= 0.8
    assert t == min(c for c in cands if _sn_sp(y, p, c)[1] >= 0.8)
    assert stats.choose_threshold(y, p, "0.42") == 0.42
    assert stats.choose_threshold(y, p, "specificity=1.0") > p[y == 0].max()
    assert stats.choose_threshold(y, p, "sensitivity=0.0") > p.max()  # nobody positive, still finite
    with pytest.raises(ValueError, match="single class"):
        stats.choose_threshold(np.ones(5), np.linspace(0, 1, 5), "youden")


def test_operating_points_match_counts():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.7, 0.9])
    (row,) = stats.operating_points(y, p, [0.5])
    assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (2, 1, 1, 1)
    assert row["sn"] == pytest.approx(2 / 3) and row["sp"] == 0.5 and row["youden"] == pytest.approx(2 / 3 - 0.5)
    (row,) = stats.operating_points(np.zeros(3), np.ones(3), [0.5])
    assert math.isnan(row["sn"])


# --- calibration ---------------------------------------------------------------------------------

def test_ece_matches_sklearn_calibration_curve():
    rng = np.random.default_rng(4)
    p = rng.random(500) ** 2
    y = (rng.random(500) < np.clip(p * 1.3, 0, 1)).astype(int)
    true, pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    edges = np.linspace(0, 1, 11)
    counts = np.array([((p >= lo) & (p < hi)).sum() if hi < 1 else ((p >= lo) & (p <= hi)).sum()
                       for lo, hi in zip(edges[:-1], edges[1:])])
    counts = counts[counts > 0]
    assert stats.ece(y, p, 10) == pytest.approx(float(np.sum(counts / p.size * np.abs(true - pred))), abs=1e-9)
    cal = stats.calibration(y, p)
    assert cal["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert stats.ece(np.r_[np.zeros(50), np.ones(50)], np.full(100, 0.5)) == pytest.approx(0.0)
    single = stats.calibration(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]))
    assert single["brier"] == pytest.approx(np.mean([0.01, 0.04, 0.09, 0.16]))


def test_temperature_scaling_recovers_the_true_temperature():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 3, 20000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z / 2.5))).astype(int)  # true T = 2.5
    t = stats.fit_temperature(y, z)
    assert t == pytest.approx(2.5, rel=0.05)
    assert stats.nll(y, z, t) <= min(stats.nll(y, z, t * 0.97), stats.nll(y, z, t * 1.03))
    with pytest.raises(ValueError, match="both classes"):
        stats.fit_temperature(np.ones(10), z[:10])
