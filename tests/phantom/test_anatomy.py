"""The phantom's spine (vfa.anatomy): the fracture sampler, and how the column settles onto a collapse."""
import numpy as np
import pytest

from vfa.phantom.anatomy import LEVELS, body_shapes, draw_spine, sample_fractures, settle


def test_fracture_sampler_distribution():
    rng = np.random.default_rng(0)
    draws = [sample_fractures(rng, (0.4, 0.4, 0.2)) for _ in range(400)]
    worst = np.array([max(f["grade"] for f in d) for d in draws])
    for g, want in zip((1, 2, 3), (0.4, 0.4, 0.2)):
        assert abs((worst == g).mean() - want) < 0.08
    flat = [f for d in draws for f in d]
    assert all(1 <= len(d) <= 3 and len({f["level"] for f in d}) == len(d) for d in draws)
    lo = {1: 0.20, 2: 0.25, 3: 0.40}
    hi = {1: 0.25, 2: 0.40, 3: 0.60}
    assert all(lo[f["grade"]] <= f["height_loss"] <= hi[f["grade"]] for f in flat)
    # fractures cluster at T7-T8 and T11-L1
    hot = np.mean([f["level"] in ("T7", "T8", "T11", "T12", "L1") for f in flat])
    assert hot > 0.45
    assert {f["type"] for f in flat} == {"wedge", "biconcave", "crush"}
    only3 = [sample_fractures(rng, (0, 0, 1)) for _ in range(50)]
    assert all(max(f["grade"] for f in d) == 3 for d in only3)



@pytest.mark.parametrize("level", ["T8", "L1", "L3"])
def test_a_settled_wedge_keeps_the_upper_spine_upright(level):
    rng = np.random.default_rng(5)
    an = draw_spine(rng, 640, 384)
    shapes = body_shapes(rng, an, [dict(level=level, grade=3, type="wedge", height_loss=0.5)])
    out = settle(an, [dict(sh) for sh in shapes])
    i = LEVELS.index(level)
    # the wedge's angle (~20 degrees) shows at the fracture as local kyphosis ...
    assert np.degrees(out["phi"][i - 1] - out["phi"][i + 1]) - np.degrees(an["phi"][i - 1] - an["phi"][i + 1]) > 15
    # ... but the discs above take it back, so T4 (and the rib cage) keep their tilt: no spine-wide cue
    assert out["phi"][0] == pytest.approx(an["phi"][0], abs=1e-9)
    assert np.allclose(out["phi"][i + 1:], an["phi"][i + 1:])


def _rim(an, sh, j, side, plate):
    """Image position of vertebra j's end plate at its anterior (-1) or posterior (+1) rim."""
    phi, s = an["phi"][j], sh[j]
    eu, ev = np.array([np.cos(phi), -np.sin(phi)]), np.array([np.sin(phi), np.cos(phi)])
    hu = s["ha"] if side < 0 else s["hp"]
    if plate == "top":
        v = -s["ref"] / 2 + s["k_top"] * (s["ref"] - hu)
    else:
        v = s["ref"] / 2 - (1 - s["k_top"]) * (s["ref"] - hu)
    return np.array([an["cx"][j], an["cy"][j]]) + side * an["w"][j] / 2 * eu + v * ev


def test_settle_keeps_discs_and_adds_the_wedge_angle_as_local_kyphosis_balanced_above():
    n = len(LEVELS)   # a straight spine of bodies 10 tall, 14 deep, discs 3
    an = dict(cx=np.full(n, 50.0), cy=np.arange(n) * 13.0, phi=np.zeros(n), h=np.full(n, 10.0),
              w=np.full(n, 14.0), frame=np.array([0.5, 0.0]), size=np.array([100, 200]), fill=0.83)
    sh = [dict(ha=10.0, hm=10.0, hp=10.0, ref=10.0, k_top=0.5, ha0=10.0, hp0=10.0) for _ in range(n)]
    sh[6].update(ha=5.0, hm=7.5, k_top=0.7)                     # T10: anterior wedge, half its height

    def disc(a, j, side):
        return np.linalg.norm(_rim(a, sh, j + 1, side, "top") - _rim(a, sh, j, side, "bottom"))

    assert disc(an, 5, -1) == pytest.approx(3 + 0.7 * 5)         # before: the gap a real spine closes
    out = settle(an, sh)
    k = out["h"][0] / 10          # framed again to the same height: the bodies grow by what collapsed
    assert 1.005 < k < 1.04
    wedge = 5 / 14                                              # radians; 0.3 of it at the lower plate
    for j in range(n - 1):
        ant, post = disc(out, j, -1), disc(out, j, 1)
        assert (ant + post) / 2 == pytest.approx(3 * k, abs=0.25), j   # every disc keeps its height
        if j >= 6:   # at and below the fracture: both rims exactly
            assert ant == pytest.approx(3 * k, abs=0.25) and post == pytest.approx(3 * k, abs=0.25), j
        else:        # above it, each disc takes back an equal share of the tilt (sagittal balance)
            share = 0.3 * wedge / 6 + (0.7 * wedge / 5 if j < 5 else 0)
            assert ant - post == pytest.approx(14 * k * share, abs=0.25), j   # opens anteriorly
    # local kyphosis: the fractured body tilts by its lower share, the vertebra above by nearly the
    # whole wedge (less the share disc T9/T10 takes back); T4 stands as it stood
    assert out["phi"][6] - out["phi"][7] == pytest.approx(0.3 * wedge, rel=0.02)
    assert out["phi"][5] - out["phi"][7] == pytest.approx(wedge * (1 - 0.3 / 6), rel=0.02)
    assert out["phi"][0] == pytest.approx(0, abs=1e-9)
    assert np.allclose(np.diff(out["cy"][7:]), 13 * k) and np.allclose(out["phi"][7:], 0)
    assert settle(an, [dict(s, ha=s["ha0"], hm=10.0, k_top=0.5) for s in sh]) is an   # no fracture: untouched
