import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_score, recall_score, roc_auc_score, roc_curve

from vfa.stats.metrics import SCALAR_KEYS, format_line, med_metrics, scalars


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.35 * y + rng.random(200) * 0.65, 0, 1)
    return y, p


def test_against_sklearn(data):
    y, p = data
    md = med_metrics(y, p, 0.5)
    pred = (p >= 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert (md["tn"], md["fp"], md["fn"], md["tp"]) == (tn, fp, fn, tp)
    assert md["auc"] == pytest.approx(roc_auc_score(y, p))
    assert md["sn"] == pytest.approx(recall_score(y, pred))
    assert md["sp"] == pytest.approx(recall_score(1 - y, 1 - pred))
    assert md["ppv"] == pytest.approx(precision_score(y, pred))
    assert md["npv"] == pytest.approx(precision_score(1 - y, 1 - pred))
    assert md["acc"] == pytest.approx((tp + tn) / len(y))
    fpr, tpr, _ = roc_curve(y, p)
    np.testing.assert_allclose(md["fpr"], fpr)
    np.testing.assert_allclose(md["tpr"], tpr)


def test_likelihood_ratios_use_correct_formula(data):
    y, p = data
    md = med_metrics(y, p)
    assert md["plr"] == pytest.approx(md["sn"] / (1 - md["sp"]))
    # the notebook computed sp / (1 - sn); the negative likelihood ratio is (1 - sn) / sp
    assert md["nlr"] == pytest.approx((1 - md["sn"]) / md["sp"])
    assert md["nlr"] != pytest.approx(md["sp"] / (1 - md["sn"]))


def test_column_vector_predictions_are_flattened(data):
    y, p = data
    assert med_metrics(y, p[:, None])["tp"] == med_metrics(y, p)["tp"]


def test_zero_denominators_give_nan_inf_with_notes_and_no_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        md = med_metrics([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])  # nothing predicted positive
        assert md["sn"] == 0 and md["sp"] == 1
        assert math.isnan(md["ppv"]) and math.isnan(md["plr"])
        assert any("PPV" in n for n in md["notes"])
        perfect = med_metrics([0, 1], [0.1, 0.9])
        assert perfect["plr"] == math.inf and perfect["nlr"] == 0
        single = med_metrics([1, 1, 1], [0.2, 0.7, 0.9])
        assert math.isnan(single["auc"]) and math.isnan(single["sp"])
        assert any("one class" in n for n in single["notes"])


def test_scalars_and_print(data):
    y, p = data
    md = med_metrics(y, p)
    s = scalars(md)
    assert tuple(s) == SCALAR_KEYS
    assert "AUC:" in format_line(md) and "Sn:" in format_line(md)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ"):
        med_metrics([0, 1], [0.5])
