"""Per-vertebra metrics with a truth that marks levels unreadable and a reading that calls some not
evaluable: which bodies each metric counts, the readable agreement, and the breakdown by vendor,
grade, level band and mimic. Every expected value is counted by hand below (the Wilson CIs by
statsmodels, the kappa by scikit-learn on the hand-listed grades), not by the code under test."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.proportion import proportion_confint

from tests.vertebra.helpers import body, table
from vfa.evaluation import vertebra_metrics as vm
from vfa.runs import json_safe


def _pred(levels, ys, grades, evaluable, p):
    """Predicted rows at the true boxes (IoU 1): grades with None where not evaluable."""
    ok = np.asarray(evaluable, dtype=bool)
    return table(levels, [body(y) for y in ys], grade=pd.array(grades, dtype="Int64"),
                 type=["" if not e else ("wedge" if g else "normal") for g, e in zip(grades, ok)],
                 p_fracture=np.where(ok, p, np.nan), evaluable=ok.astype(int),
                 wedge_ratio=1.0, biconcave_ratio=1.0, crush_ratio=1.0)


def bodies():
    """Image 0 (hologic), seven true bodies:
        T4 unreadable, normal: read not evaluable (agrees)      T5 unreadable, grade 1: read evaluable, 1
        T6 readable, normal, a physiological wedge: called 1     T7 readable, grade 2: called not evaluable
        T8 readable, grade 1: called 1                           T9 readable, normal, Schmorl's node: 0
        T10 readable, grade 3: missed (read normal)
    Image 1 (lunar): T11 readable normal, read 0; L1 readable grade 2, read 2."""
    lv0 = ["T4", "T5", "T6", "T7", "T8", "T9", "T10"]
    t0 = table(lv0, [body(40 * i) for i in range(7)], grade=[0, 1, 0, 2, 1, 0, 3],
               type=["normal", "wedge", "normal", "wedge", "wedge", "normal", "crush"],
               readable=[0, 0, 1, 1, 1, 1, 1],
               mimic=["none", "none", "physiological_wedge", "none", "none", "schmorl", "none"])
    p0 = _pred(lv0[:6], [40 * i for i in range(6)], [None, 1, 1, None, 1, 0], [0, 1, 1, 0, 1, 1],
               [0.0, 0.9, 0.7, 0.0, 0.8, 0.1])
    t1 = table(["T11", "L1"], [body(0), body(40)], grade=[0, 2], type=["normal", "wedge"], readable=[1, 1],
               mimic=["none", "none"])
    p1 = _pred(["T11", "L1"], [0, 40], [0, 2], [1, 1], [0.2, 0.95])
    b = pd.concat([vm.match_image(0, t0, p0), vm.match_image(1, t1, p1)], ignore_index=True)
    b["vendor"] = np.where(b["image"] == 0, "hologic", "lunar")
    return b


def wilson(k, n):
    return list(proportion_confint(k, n, alpha=0.05, method="wilson"))


def check(share, k, n):
    assert (share["k"], share["n"]) == (k, n)
    assert share["value"] == pytest.approx(k / n)
    np.testing.assert_allclose(share["ci"], wilson(k, n), atol=1e-9)


def test_only_readable_bodies_are_scored_and_not_evaluable_calls_leave_the_fracture_metrics():
    b = bodies()
    assert list(b["pred_evaluable"]) == [False, True, True, False, True, True, True, True, True]
    out = vm.bootstrap(b, n=20)
    # scored: T6-T10, T11, L1 (7); found among them: all but T10
    check(out["detection_recall"], 6, 7)
    # fracture calls over the scored bodies read evaluable (T7 left out; missed T10 read normal)
    check(out["sensitivity"], 2, 3)        # T8 yes, T10 no, L1 yes
    check(out["specificity"], 2, 3)        # T6 called (a mimic), T9 and T11 not
    check(out["sensitivity_grade3"], 0, 1)
    check(out["readable_agreement"], 6, 8)  # every found body with a readable: T5 and T7 disagree
    check(out["not_evaluable"], 1, 6)       # T7 among the six found scored bodies
    kappa = cohen_kappa_score([0, 1, 0, 3, 0, 2], [1, 1, 0, 0, 0, 2], weights="linear", labels=[0, 1, 2, 3])
    assert out["grade_kappa"]["value"] == pytest.approx(kappa)
    assert out["n"] == {"images": 2, "vertebrae": 9, "fractured": 4, "grade1": 1, "grade2": 2, "grade3": 1,
                        "unreadable": 2, "not_evaluable_calls": 2}


def test_the_breakdown_by_vendor_grade_band_and_mimic():
    bd = vm.bootstrap(bodies(), n=20)["breakdown"]
    assert list(bd) == ["vendor", "grade", "band", "mimic"]
    assert list(bd["band"]) == ["T4-T6", "T7-T12", "L1-L4"] and list(bd["grade"]) == ["0", "1", "2", "3"]
    h, lu = bd["vendor"]["hologic"], bd["vendor"]["lunar"]
    assert h["n"] == 5 and lu["n"] == 2
    check(h["sensitivity"], 1, 2), check(h["specificity"], 1, 2), check(h["readable_agreement"], 4, 6)
    check(lu["sensitivity"], 1, 1), check(lu["specificity"], 1, 1)
    g = bd["grade"]
    check(g["0"]["specificity"], 2, 3), check(g["1"]["sensitivity"], 1, 1)   # T5 (grade 1) is unreadable
    check(g["2"]["sensitivity"], 1, 1), check(g["3"]["sensitivity"], 0, 1)
    assert g["0"]["sensitivity"]["n"] == 0 and np.isnan(g["0"]["sensitivity"]["value"])
    check(bd["band"]["T4-T6"]["specificity"], 0, 1)
    check(bd["band"]["T7-T12"]["sensitivity"], 1, 2), check(bd["band"]["T7-T12"]["specificity"], 2, 2)
    check(bd["band"]["L1-L4"]["sensitivity"], 1, 1)
    m = bd["mimic"]
    assert set(m) == {"none", "physiological_wedge", "schmorl"}
    for kind, (k, n) in {"physiological_wedge": (1, 1), "schmorl": (0, 1), "none": (0, 1)}.items():
        assert (m[kind]["k"], m[kind]["n"], m[kind]["false_positive_rate"]) == (k, n, k / n)
        np.testing.assert_allclose(m[kind]["ci"], wilson(k, n), atol=1e-9)
    json.dumps(json_safe(bd))   # metrics.json takes it


def test_a_truth_without_readable_mimic_or_vendor_scores_every_body_as_before():
    b = bodies().drop(columns=["readable", "mimic", "vendor"])
    b["readable"] = np.nan      # what match_image gives a table without the column
    out = vm.bootstrap(b, n=10)
    check(out["detection_recall"], 8, 9)
    assert out["readable_agreement"]["n"] == 0 and out["n"]["unreadable"] == 0
    assert list(out["breakdown"]) == ["grade", "band"]   # no vendor, no mimic: skipped, not guessed
    names = [line.split("|")[1].strip() for line in vm.table_lines(out)]
    assert "Evaluable call = truth's readable (found)" not in names
    assert "Readable bodies called not evaluable" in names   # two bodies were called so


def test_the_table_prints_the_readability_rows_and_the_groups():
    lines = vm.table_lines(vm.bootstrap(bodies(), n=10))
    text = "\n".join(lines)
    assert "| Evaluable call = truth's readable (found) | 0.750 (6/8) |" in text
    assert "| Sn / Sp, vendor hologic | 0.500 (1/2) / 0.500 (1/2) |" in text
    assert "| False-positive rate, mimic physiological_wedge | 1.000 (1/1) |" in text
    # pooled over the kinds (not `none`): 1 of the wedge and the Schmorl's node, Wilson by statsmodels
    lo, hi = wilson(1, 2)
    assert f"| False-positive rate, mimic (any) | 0.500 (1/2) | {lo:.3f}-{hi:.3f} | Wilson | <= 0.10 **not met** |" \
        in text
    assert "<= 0.10 **not met**" in text
    assert all(line.count("|") == 6 for line in lines)   # one Markdown table


def test_describe_image_names_the_levels_not_evaluable():
    b = bodies()
    text = vm.describe_image(b[b["image"] == 0], 6)
    assert "not evaluable: T4, T7" in text
    assert "fracture not called: T10" not in text and "missed 1 of 7: T10 (fractured, grade 3)" in text
