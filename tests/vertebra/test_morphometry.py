"""Genant's rules on hand-computed heights, and the phantom's truth read back by them."""
import numpy as np
import pandas as pd
import pytest

from vfa.stats import morphometry as m


def body(ha, hm, hp, x=100.0, y=100.0, w=40.0):
    """Six points of an upright body whose anterior/middle/posterior heights are ha, hm, hp (the
    superior end plate carries the whole collapse)."""
    base = y + 30
    return np.array([[x, base - ha], [x + w / 2, base - hm], [x + w, base - hp],
                     [x, base], [x + w / 2, base], [x + w, base]])


def test_heights_are_the_wall_distances():
    pts = body(21.0, 24.5, 30.0)
    assert np.allclose(m.heights(pts[None]), [[21.0, 24.5, 30.0]])
    tilted = pts @ np.array([[0.8, -0.6], [0.6, 0.8]])   # a rotation keeps every height
    assert np.allclose(m.heights(tilted[None]), [[21.0, 24.5, 30.0]])


@pytest.mark.parametrize("loss,grade", [(0.0, 0), (0.19, 0), (0.2001, 1), (0.249, 1), (0.2501, 2), (0.399, 2),
                                        (0.4001, 3), (0.7, 3)])
def test_grade_cut_points(loss, grade):
    assert m.grade_of(loss) == grade


def spine(changes: dict) -> tuple[np.ndarray, list[str]]:
    """13 normal bodies growing 3 % per level, with (ha, hm, hp) factors at some levels."""
    pts, levels = [], list(m.LEVELS)
    for i, lv in enumerate(levels):
        h = 20.0 * 1.03 ** i
        fa, fm, fp = changes.get(lv, (1.0, 1.0, 1.0))
        pts.append(body(h * fa, h * fm, h * fp, y=40.0 * i))
    return np.array(pts), levels


def test_hand_computed_wedge_biconcave_crush():
    # T7 anterior 30 % lower (moderate wedge); L1 middle 22 % lower (mild biconcave); T11 all 45 % lower
    # than its neighbours predict (severe crush); T5 anterior 10 % lower (normal variation)
    pts, levels = spine({"T7": (0.70, 0.85, 1.0), "L1": (1.0, 0.78, 1.0), "T11": (0.55, 0.55, 0.55),
                         "T5": (0.90, 1.0, 1.0)})
    r = m.apply_genant_rules(pts, levels)
    got = {lv: (int(g), t) for lv, g, t in zip(levels, r["grade"], r["type"])}
    assert got["T7"] == (2, "wedge") and got["L1"] == (1, "biconcave") and got["T11"] == (3, "crush")
    assert got["T5"] == (0, "normal")
    assert sum(g > 0 for g, _ in got.values()) == 3
    i = levels.index("T7")
    assert r["wedge_ratio"][i] == pytest.approx(0.70) and r["height_loss"][i] == pytest.approx(0.30)
    j = levels.index("T11")   # the reference is the neighbours' trend: 20 * 1.03^j
    assert r["ref"][j] == pytest.approx(20.0 * 1.03 ** j, rel=1e-6)
    assert r["crush_ratio"][j] == pytest.approx(0.55, rel=1e-6)


def test_reference_ignores_a_fractured_neighbour():
    pts, levels = spine({"T11": (0.55, 0.55, 0.55), "T12": (0.6, 0.6, 0.6)})
    r = m.apply_genant_rules(pts, levels)
    both = [levels.index("T11"), levels.index("T12")]
    assert list(r["grade"][both]) == [3, 3] and list(r["type"][both]) == ["crush", "crush"]
    assert r["grade"].sum() == 6


def test_partial_spine_keeps_levels_apart():
    pts, levels = spine({})
    keep = [2, 3, 4, 9, 10]   # T6-T8 and L1-L2 only: the trend still spans the gap
    r = m.apply_genant_rules(pts[keep], [levels[k] for k in keep])
    assert (r["grade"] == 0).all()
    assert np.allclose(r["crush_ratio"], 1.0, atol=1e-6)


def test_phantom_truth_reads_back(tmp_path):
    """The rules on vfa synth's exact points agree with the grades it drew (the model's ceiling)."""
    from vfa.phantom.synth import PhantomConfig, synthesize

    synthesize(tmp_path, PhantomConfig(n=40, size=(320, 192), prevalence=0.5, workers=1), progress=False)
    v = pd.read_csv(tmp_path / "vertebrae.csv")
    assert len(v) == 40 * 13
    agree = []
    for _, g in v.groupby("filename"):
        r = m.apply_genant_rules(g[list(m.POINT_COLUMNS)].to_numpy().reshape(-1, 6, 2), list(g["level"]))
        assert np.allclose(r["ha"], g["ha"], atol=0.02) and np.allclose(r["hp"], g["hp"], atol=0.02)
        agree += list((r["grade"] > 0) == (g["grade"] > 0))
    assert np.mean(agree) > 0.98
