"""Level assignment and who makes each call, on hand-made inputs."""
import numpy as np

from vfa.inference.vertebra import assign_levels, spine_rows


def clear(n=13, p=0.88):
    lp = np.log(np.full((n, 13), (1 - p) / 12))
    lp[np.arange(n), np.arange(n)] = np.log(p)
    return lp


def test_levels_follow_order_and_classifier():
    assert list(assign_levels(np.full(13, 0.9), clear())) == list(range(13))
    assert list(assign_levels(np.full(6, 0.9), clear()[4:10])) == [4, 5, 6, 7, 8, 9]   # a partial view
    assert len(assign_levels(np.zeros(0), np.zeros((0, 13)))) == 0


def test_a_weak_body_inside_the_column_is_kept_and_a_spurious_peak_dropped():
    lp, s = clear(), np.full(13, 0.9)
    lp[9], s[9] = np.log(np.full(13, 1 / 13)), 0.4     # a collapsed L1: weak peak, unsure level
    assert list(assign_levels(s, lp)) == list(range(13))
    assert assign_levels(s, lp, gap=0.0)[9] == -1        # without the gap cost it would be dropped
    lp2 = np.insert(clear(), 4, np.log(np.full(13, 1 / 13)), axis=0)
    s2 = np.insert(np.full(13, 0.9), 4, 0.35)           # a rib crossing between T7 and T8
    assert list(assign_levels(s2, lp2)) == [0, 1, 2, 3, -1, *range(4, 13)]


def body(ha, hm, hp, y):
    return np.array([[0, y + 30 - ha], [20, y + 30 - hm], [40, y + 30 - hp], [0, y + 30], [20, y + 30], [40, y + 30]])


def test_rules_grade_and_the_head_calls_what_the_rules_miss():
    pts = np.array([body(30 * f, 30, 30, 40 * i) for i, f in enumerate([1, 0.7, 0.9, 1, 1])], dtype=float)
    rows = spine_rows("a.png", pts, np.arange(5), np.array([0.1, 0.2, 0.8, 0.2, 0.6]))
    # body 1: a 30 % wedge the rules grade 2 although the head says 0.2; bodies 2 and 4: under 20 %
    # loss, called by the head alone, graded 1; bodies 0 and 3: normal by both
    assert list(rows["grade"]) == [0, 2, 1, 0, 1]
    assert list(rows["grade_source"]) == ["rules", "rules", "head", "rules", "head"]
    assert list(rows["type"])[:4] == ["normal", "wedge", "wedge", "normal"]
