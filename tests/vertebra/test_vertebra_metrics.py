"""vfa.evaluation.vertebra_metrics on hand-built tables whose answers are worked out by hand in the
comments (scikit-learn's kappa and AUC as second oracles).

Every body is an axis-aligned box 40 px wide and 30 px tall (ha = hm = hp = 30) unless said
otherwise, so the IoU of a copy shifted down by d px is (30 - d) / (30 + d): d = 6 -> 24/36 = 0.667
(matched), d = 12 -> 18/42 = 0.429 (not matched).
"""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from tests.vertebra.helpers import LEVELS7, body, scene, several_images, table
from vfa.evaluation import vertebra_metrics as vm


def test_iou_of_hand_made_boxes():
    a = np.array([[0, 0, 40, 30]], dtype=float)
    b = np.array([[0, 6, 40, 36], [0, 12, 40, 42], [0, 15, 40, 45], [100, 100, 140, 130], [20, 0, 60, 30]], dtype=float)
    # overlaps 24, 18, 15, 0 rows of 40 px; the last shares half the width: 600 / (2400 - 600)
    assert vm._iou(a, b)[0] == pytest.approx([24 / 36, 18 / 42, 15 / 45, 0.0, 600 / 1800])


def test_matching_found_missed_wrong_level_and_point_error():
    truth, pred = scene()
    m = vm.match_image(0, truth, pred)
    assert len(m) == 7 and list(m["level"]) == LEVELS7        # one row per true body, spurious one ignored
    assert list(m["found"]) == [True] * 6 + [False]
    assert list(m["pred_level"]) == ["T4", "T6", "T6", "T7", "T8", "T9", ""]
    assert list(m["pred_grade"]) == [0, 0, 1, 1, 1, 3, 0]      # the missed body reads normal
    assert m["p_fracture"].iloc[6] == 0.0
    assert m["point_error"].iloc[:6].to_numpy() == pytest.approx([0, 0, 0.2, 0, 0, 0])
    assert np.isnan(m["point_error"].iloc[6])
    # the truth's rectangles: every ratio 1 (ha = hm = hp and the neighbours predict 30)
    assert m[["true_wedge_ratio", "true_biconcave_ratio", "true_crush_ratio"]].to_numpy() == pytest.approx(1.0)


def test_a_prediction_exactly_at_iou_half_is_matched():
    # truth 40 x 30; the prediction shares 20 of its 40 columns and is 20 wide: 600 / 1200 = 0.5
    truth = table(["T7"], [body(0)], grade=[0])
    pred = table(["T7"], [body(0, x=20, w=20)], grade=[0], type=["normal"], p_fracture=[0.1],
                 wedge_ratio=1.0, biconcave_ratio=1.0, crush_ratio=1.0)
    assert vm.match_image(0, truth, pred)["found"].tolist() == [True]


def test_assignment_is_one_to_one():
    # two true bodies, one prediction overlapping both (IoU 0.667 with T7, 0 with T8): T8 stays missed,
    # the prediction is not counted twice
    truth = table(["T7", "T8"], [body(0), body(40)], grade=[0, 0])
    pred = table(["T7"], [body(6)], grade=[0], type=["normal"], p_fracture=[0.1], wedge_ratio=1.0,
                 biconcave_ratio=1.0, crush_ratio=1.0)
    assert vm.match_image(0, truth, pred)["found"].tolist() == [True, False]


def test_grades_come_from_the_rules_when_the_truth_has_none():
    # a 30 % anterior collapse (ha 21 of hp 30): wedge ratio 0.7 -> height loss 0.3 -> grade 2, wedge
    truth = table(["T6", "T7", "T8"], [body(0), body(40, ha=21.0), body(80)])
    m = vm.match_image(0, truth, truth.iloc[:0])
    assert m["grade"].tolist() == [0, 2, 0] and m["type"].tolist() == ["normal", "wedge", "normal"]
    assert m["true_wedge_ratio"].iloc[1] == pytest.approx(0.7)


def test_scalars_of_the_scene():
    truth, pred = scene()
    s = vm.scalars(vm.match_image(0, truth, pred))
    assert s["detection_recall"] == pytest.approx(6 / 7)
    assert s["level_accuracy"] == pytest.approx(5 / 6)         # T5 read as T6
    assert s["point_error"] == pytest.approx(0.2 / 6)
    # ratio errors of the found bodies: T7 wedge 0.24, T9 crush 0.45, the rest 0
    assert s["wedge_ratio_error"] == pytest.approx(0.24 / 6)
    assert s["biconcave_ratio_error"] == pytest.approx(0.0)
    assert s["crush_ratio_error"] == pytest.approx(0.45 / 6)
    assert s["ratio_error"] == pytest.approx((0.24 + 0.45) / 3 / 6)
    # called (grade >= 1) per body: F F T T T T F(missed); truly fractured: F F F T T T T
    assert s["sensitivity"] == pytest.approx(3 / 4)
    assert s["specificity"] == pytest.approx(2 / 3)
    assert (s["sensitivity_grade1"], s["sensitivity_grade2"], s["sensitivity_grade3"]) == pytest.approx((1, 0.5, 1))
    # fractures both true and called: T7 wedge/wedge, T8 biconcave/wedge, T9 crush/crush
    assert s["shape_accuracy"] == pytest.approx(2 / 3)


def test_grade_kappa_by_hand_and_by_scikit_learn():
    truth, pred = scene()
    s = vm.scalars(vm.match_image(0, truth, pred))
    # truth 0 0 0 1 2 3 2, read 0 0 1 1 1 3 0; linear weights |i - j| / 3.
    # observed disagreement (1/3 + 1/3 + 2/3) / 7 = 4/21; truth counts (3, 1, 2, 1), read (3, 3, 0, 1):
    # expected sum_ij t_i r_j |i - j| / (3 * 49) = (18 + 5 + 20 + 15) / 147 = 58/147; kappa = 1 - 28/58
    assert s["grade_kappa"] == pytest.approx(15 / 29)
    g, r = [0, 0, 0, 1, 2, 3, 2], [0, 0, 1, 1, 1, 3, 0]
    assert s["grade_kappa"] == pytest.approx(cohen_kappa_score(g, r, weights="linear"))


def test_auc_by_hand_and_by_scikit_learn():
    truth, pred = scene()
    s = vm.scalars(vm.match_image(0, truth, pred))
    # P of fractured bodies 0.7 0.4 0.9 0 (missed) vs normal ones 0.1 0.2 0.6: 3 + 2 + 3 + 0 of 12 pairs
    assert s["auc"] == pytest.approx(8 / 12)
    assert s["auc"] == pytest.approx(roc_auc_score([0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.6, 0.7, 0.4, 0.9, 0.0]))


def test_undefined_metrics_are_nan_not_zero():
    # all normal and all read normal: no sensitivity, no kappa (one grade only), no AUC
    truth = table(["T6", "T7", "T8"], [body(0), body(40), body(80)], grade=[0, 0, 0])
    s = vm.scalars(vm.match_image(0, truth, truth.iloc[:0]))
    assert s["detection_recall"] == 0 and s["specificity"] == 1
    assert all(np.isnan(s[k]) for k in ("sensitivity", "grade_kappa", "auc", "level_accuracy", "point_error"))


def two_images():
    """Image 0: one body, found. Image 1: three bodies, none found."""
    a = vm.match_image(0, table(["T7"], [body(0)], grade=[0]), table(
        ["T7"], [body(0)], grade=[0], type=["normal"], p_fracture=[0.1], wedge_ratio=1.0, biconcave_ratio=1.0,
        crush_ratio=1.0))
    b = vm.match_image(1, table(["T6", "T7", "T8"], [body(0), body(40), body(80)], grade=[0, 1, 0]),
                       table(["T7"], [body(0)]).iloc[:0])
    return pd.concat([a, b], ignore_index=True)


def test_bootstrap_resamples_whole_images(monkeypatch):
    bodies = two_images()
    seen = []
    real = vm.scalars

    def spy(b):
        seen.append(b)
        return real(b)

    monkeypatch.setattr(vm, "scalars", spy)
    out = vm.bootstrap(bodies, n=60, seed=1)
    draws = seen[1:]                                        # the first call is the point estimate
    assert len(draws) == 60
    for d in draws:
        # each draw is two images with replacement: whole images only, never a part of one
        counts = d["image"].value_counts()
        assert len(d) in (2, 4, 6) and all(counts.get(i, 0) % n == 0 for i, n in ((0, 1), (1, 3)))
    # recall of a draw: image 0 twice -> 1, image 1 twice -> 0, one of each -> 1/4; never 1/2 or 3/4
    recalls = {round(real(d)["detection_recall"], 6) for d in draws}
    assert recalls == {0.0, 0.25, 1.0}
    assert out["detection_recall"]["value"] == pytest.approx(0.25)
    assert out["n"] == {"images": 2, "vertebrae": 4, "fractured": 1, "grade1": 1, "grade2": 0, "grade3": 0,
                        "unreadable": 0, "not_evaluable_calls": 0}


def test_bootstrap_ci_contains_the_point_estimate_and_is_reproducible():
    bodies = several_images()
    out = vm.bootstrap(bodies, n=60, seed=3)
    point = vm.scalars(bodies)
    checked = 0
    for key, v in out.items():
        if key in ("n", "breakdown") or np.isnan(v["value"]):
            continue
        assert v["value"] == pytest.approx(point[key])
        lo, hi = v["ci"]
        assert lo - 1e-12 <= v["value"] <= hi + 1e-12, key
        checked += 1
    assert checked >= 12
    # images differ (each misses another body), so recall varies between resamples: a real interval
    lo, hi = out["detection_recall"]["ci"]
    assert lo < hi
    assert repr(vm.bootstrap(bodies, n=60, seed=3)) == repr(out)


def test_image_auc_matches_scikit_learn():
    labels, p = [0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9]
    # positives 0.35 0.8 0.9 vs negatives 0.1 0.4 0.2: 2 + 3 + 3 of 9 pairs
    out = vm.image_auc(labels, p)
    assert out["auc"] == pytest.approx(8 / 9) == roc_auc_score(labels, p)
    assert out["ci"][0] <= out["auc"] <= out["ci"][1]


def test_table_lines_has_one_row_per_metric():
    out = vm.bootstrap(several_images(4), n=20)
    lines = vm.table_lines(out, {"auc": 0.9, "ci": [0.8, 1.0]})
    # no `readable` in the truth and no body called not evaluable: the two readability rows stay out
    at = next(i for i, line in enumerate(lines) if line.startswith("| Image-level AUC"))
    assert at == 2 + len(vm.TABLE) - len(vm.OPTIONAL) and "0.800-1.000" in lines[at]
    # then the breakdown: grades 0 (Sp only), 1, 2, 3 (Sn only) and the bands the scene has (T4-T6: normal
    # only; T7-T12: fractured only)
    names = [line.split("|")[1].strip() for line in lines[at + 1:]]
    assert names == ["Sp, grade 0", "Sn, grade 1", "Sn, grade 2", "Sn, grade 3", "Sp, band T4-T6",
                     "Sn, band T7-T12"]


def perfect_images(k=8):
    """k images of the scene read exactly as the truth (every body found, level and grade right)."""
    parts = []
    for i in range(k):
        truth, _ = scene()
        pred = truth.assign(p_fracture=(truth["grade"] > 0) * 0.9, wedge_ratio=1.0, biconcave_ratio=1.0,
                            crush_ratio=1.0)
        parts.append(vm.match_image(i, truth, pred))
    return pd.concat(parts, ignore_index=True)


def test_a_share_of_bodies_gets_a_wilson_interval_not_a_collapsed_bootstrap():
    from statsmodels.stats.proportion import proportion_confint

    bodies = perfect_images()      # 8 images x 7 bodies: 56 found of 56, 32 fractures all called
    out = vm.bootstrap(bodies, n=50, seed=0)
    for key, k, n in (("detection_recall", 56, 56), ("sensitivity", 32, 32), ("specificity", 24, 24),
                      ("sensitivity_grade3", 8, 8)):
        v = out[key]
        assert (v["method"], v["k"], v["n"], v["value"]) == ("wilson", k, n, 1.0)
        assert v["ci"] == pytest.approx(list(proportion_confint(k, n, method="wilson")), abs=1e-12)
        assert v["ci"][0] < 1.0                # 1.000-1.000 was the bootstrap's answer
        assert v["ci_images"] is None          # every resample gives 1: degenerate, so not shown
    assert out["grade_kappa"]["method"] == "bootstrap" and out["grade_kappa"]["degenerate"]
    lines = vm.table_lines(out)
    recall = next(line for line in lines if line.startswith("| Detection recall"))
    assert "1.000 (56/56)" in recall and "0.936-1.000" in recall and "Wilson; over images degenerate" in recall


def test_a_share_that_varies_between_images_keeps_its_bootstrap_beside_the_wilson_interval():
    from statsmodels.stats.proportion import proportion_confint

    bodies = several_images()      # each image misses another body: recall 6/7 - (1 of 7) per image
    out = vm.bootstrap(bodies, n=60, seed=3)
    v = out["detection_recall"]
    assert v["ci"] == pytest.approx(list(proportion_confint(v["k"], v["n"], method="wilson")), abs=1e-12)
    lo, hi = v["ci_images"]
    assert lo < v["value"] < hi
    assert out["point_error"]["method"] == "bootstrap" and not out["point_error"]["degenerate"]


def test_goals_that_are_not_met_are_marked():
    assert vm.goal_met(0.794, ">= 0.80") is False and vm.goal_met(0.80, ">= 0.80") is True
    assert vm.goal_met(0.02, "<= 0.03") is True and vm.goal_met(0.031, "<= 0.03") is False
    assert vm.goal_met(float("nan"), ">= 0.80") is None and vm.goal_met(0.5, "") is None
    out = vm.bootstrap(several_images(4), n=20)
    lines = vm.table_lines(out)
    kappa = next(line for line in lines if line.startswith("| Grade agreement"))
    assert out["grade_kappa"]["value"] < 0.8 and kappa.endswith(">= 0.80 **not met** |")
    assert not any("not met" in line for line in lines if line.startswith("| Sensitivity, grade"))  # no goal


def test_describe_image_names_misses_wrong_levels_and_calls():
    truth, pred = scene()
    m = vm.match_image(0, truth, pred)
    text = vm.describe_image(m, len(pred))
    # T10 (grade 2) missed; T5 labelled T6; T6 over-called (read grade 1); two of the 8 bodies read match no
    # true body: the T10 read 12 px low (IoU 0.429) and the L4 far below the spine
    assert text == ("missed 1 of 7: T10 (fractured, grade 2); wrong level: T5 labelled T6; called fractured, normal "
                    "in the truth: T6 (read grade 1); 2 bodies read where the truth has none")
    perfect = perfect_images(1)
    assert vm.describe_image(perfect, 7).startswith("every body found")
    truth, pred = scene()
    pred.loc[3, "grade"] = 0      # T7 (truth grade 1) found but read normal
    assert "fracture not called: T7 (grade 1)" in vm.describe_image(vm.match_image(0, truth, pred), len(pred))
