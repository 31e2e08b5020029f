"""Tests of the synthetic VFA phantom (vfa.synth): determinism, layout/manifest, real deformities."""
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vfa.synth import LEVELS, PhantomConfig, render_phantom, sample_fractures, synthesize

SMALL = (256, 154)


def cfg(**kw):
    return replace(PhantomConfig(n=20, size=SMALL, workers=1), **kw)


def read(path):
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph") / "data"
    return out, synthesize(out, cfg(n=30, seed=3), progress=False)


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_and_index_stability(tmp_path):
    a = synthesize(tmp_path / "a", cfg(n=10, seed=5), progress=False)
    b = synthesize(tmp_path / "b", cfg(n=20, seed=5, workers=2), progress=False)
    c = synthesize(tmp_path / "c", cfg(n=10, seed=6), progress=False)
    b_by_pid = b.set_index("patient_id")
    for r in a.itertuples():   # image i is the same whatever n and the number of workers
        rb = b_by_pid.loc[r.patient_id]
        assert r.label == rb.label and r.boxes == rb.boxes
        assert np.array_equal(read(tmp_path / "a" / r.filename), read(tmp_path / "b" / rb.filename))
    diff = [not np.array_equal(read(tmp_path / "a" / ra.filename), read(tmp_path / "c" / rc.filename))
            for ra, rc in zip(a.itertuples(), c.itertuples())]
    assert all(diff)


def test_rerun_is_byte_identical(tmp_path):
    synthesize(tmp_path / "a", cfg(n=6, seed=1), progress=False)
    m = synthesize(tmp_path / "b", cfg(n=6, seed=1, workers=2), progress=False)
    assert (tmp_path / "a/manifest.csv").read_bytes() == (tmp_path / "b/manifest.csv").read_bytes()
    for f in m.filename:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


# ----------------------------------------------------------------------------- layout / manifest

def test_layout_and_manifest(ds):
    out, m = ds
    disk = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert list(disk.columns) == ["filename", "split", "label", "patient_id", "n_fractures", "max_grade",
                                  "levels", "types", "grades", "boxes", "fractured_boxes"]
    assert len(disk) == 30 and disk.patient_id.is_unique
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(disk.filename)
    for r in disk.itertuples():
        split, cls, _ = r.filename.split("/")
        assert split == r.split and cls == ("frac" if r.label else "norm")
        assert (r.label == 1) == (r.n_fractures > 0) == (r.max_grade > 0)
        assert read(out / r.filename).shape == SMALL
        boxes = json.loads(r.boxes)
        assert list(boxes) == list(LEVELS)
        for x0, y0, x1, y1 in boxes.values():
            assert 0 <= x0 < x1 <= SMALL[1] and 0 <= y0 < y1 <= SMALL[0]
        centres = [(b[1] + b[3]) / 2 for b in boxes.values()]
        assert np.all(np.diff(centres) > 0)                # ordered top-to-bottom, T4 -> L4
        levels = r.levels.split(";") if r.levels else []
        assert len(levels) == r.n_fractures == len(json.loads(r.fractured_boxes))
        assert [boxes[lv] for lv in levels] == json.loads(r.fractured_boxes)
        if levels:
            assert max(int(g) for g in r.grades.split(";")) == r.max_grade
            assert set(r.types.split(";")) <= {"wedge", "biconcave", "crush"}


def test_prevalence_and_stratified_splits(tmp_path):
    m = synthesize(tmp_path / "d", cfg(n=200, size=(64, 64), seed=2, workers=2), progress=False)
    assert abs(m.label.mean() - 0.25) < 0.02
    share = m.split.value_counts(normalize=True)
    for name, want in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
        assert abs(share[name] - want) < 0.03
        assert abs(m[m.split == name].label.mean() - 0.25) < 0.05


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


# ----------------------------------------------------------------------------- the deformity is real

def bone_area(img, box):
    x0, y0, x1, y1 = box
    a = img[y0:y1, x0:x1].astype(float)
    ring = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    h, w = a.shape
    return a, (np.median(ring) + np.median(a[h // 3: 2 * h // 3, w // 3: 2 * w // 3])) / 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crush_fracture_shrinks_l1_on_the_unsettled_phantom(seed):
    frac = [dict(level="L1", grade=3, type="crush", height_loss=0.5)]
    a, ann_a = render_phantom(np.random.default_rng(seed), SMALL)
    # a normal image is the same whether the spine would settle or not
    assert np.array_equal(a, render_phantom(np.random.default_rng(seed), SMALL, settle=False)[0])
    b, ann_b = render_phantom(np.random.default_rng(seed), SMALL, frac, settle=False)
    box = ann_a["boxes"]["L1"]
    area, thr = bone_area(a, box)
    x0, y0, x1, y1 = box
    shrink = 1 - (b[y0:y1, x0:x1] > thr).sum() / (area > thr).sum()
    assert 0.35 < shrink < 0.6
    # only L1 (and its blur margin) changed: same patient otherwise, no global shortcut
    changed = np.argwhere(a != b)
    assert changed[:, 0].min() >= y0 - 3 and changed[:, 0].max() < y1 + 3
    assert ann_b["boxes"]["T12"] == ann_a["boxes"]["T12"] and ann_b["boxes"]["L2"] == ann_a["boxes"]["L2"]
    assert ann_b["boxes"]["L1"][3] - ann_b["boxes"]["L1"][1] < 0.75 * (y1 - y0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crush_fracture_shrinks_l1_and_the_spine_settles(seed):
    frac = [dict(level="L1", grade=3, type="crush", height_loss=0.5)]
    a, ann_a = render_phantom(np.random.default_rng(seed), SMALL)
    b, ann_b = render_phantom(np.random.default_rng(seed), SMALL, frac, settle=True)
    ba, bb = ann_a["boxes"], ann_b["boxes"]
    area, thr = bone_area(a, ba["L1"])
    x0, y0, x1, y1 = bb["L1"]
    shrink = 1 - (b[y0:y1, x0:x1] > thr).sum() / (area > thr).sum()
    assert 0.35 < shrink < 0.6
    assert y1 - y0 < 0.75 * (ba["L1"][3] - ba["L1"][1])
    # the neighbours settle onto the collapsed body: no widened disc space above or below it
    gap = lambda boxes, up, down: boxes[down][1] - boxes[up][3]   # noqa: E731
    for up, down in (("T12", "L1"), ("L1", "L2")):
        assert abs(gap(bb, up, down) - gap(ba, up, down)) <= 2, (up, down)
    # every other vertebra keeps its size (up to the ~2 % the framing adds): only L1 changes shape
    size = lambda box: (box[2] - box[0], box[3] - box[1])          # noqa: E731
    assert all(np.allclose(size(bb[lv]), size(ba[lv]), atol=2) for lv in LEVELS if lv != "L1")


@pytest.mark.parametrize("level", ["T8", "L1", "L3"])
def test_a_settled_wedge_keeps_the_upper_spine_upright(level):
    from vfa.synth import _anatomy, _settle, _shapes

    rng = np.random.default_rng(5)
    an = _anatomy(rng, 640, 384)
    shapes = _shapes(rng, an, [dict(level=level, grade=3, type="wedge", height_loss=0.5)])
    out = _settle(an, [dict(sh) for sh in shapes])
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
    v = -s["ref"] / 2 + s["k_top"] * (s["ref"] - hu) if plate == "top" else s["ref"] / 2 - (1 - s["k_top"]) * (s["ref"] - hu)
    return np.array([an["cx"][j], an["cy"][j]]) + side * an["w"][j] / 2 * eu + v * ev


def test_settle_keeps_discs_and_adds_the_wedge_angle_as_local_kyphosis_balanced_above():
    from vfa.synth import _settle

    n = len(LEVELS)   # a straight spine of bodies 10 tall, 14 deep, discs 3
    an = dict(cx=np.full(n, 50.0), cy=np.arange(n) * 13.0, phi=np.zeros(n), h=np.full(n, 10.0),
              w=np.full(n, 14.0), frame=np.array([0.5, 0.0]), size=np.array([100, 200]), fill=0.83)
    sh = [dict(ha=10.0, hm=10.0, hp=10.0, ref=10.0, k_top=0.5, ha0=10.0, hp0=10.0) for _ in range(n)]
    sh[6].update(ha=5.0, hm=7.5, k_top=0.7)                     # T10: anterior wedge, half its height
    disc = lambda a, j, side: np.linalg.norm(_rim(a, sh, j + 1, side, "top") - _rim(a, sh, j, side, "bottom"))  # noqa: E731
    assert disc(an, 5, -1) == pytest.approx(3 + 0.7 * 5)         # before: the gap a real spine closes
    out = _settle(an, sh)
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
    assert _settle(an, [dict(s, ha=s["ha0"], hm=10.0, k_top=0.5) for s in sh]) is an   # no fracture: untouched


def test_grade1_height_loss_is_20_to_25_percent():
    rng = np.random.default_rng(1)
    for _ in range(30):
        f = dict(level="T8", grade=1, type=str(rng.choice(["wedge", "biconcave", "crush"])),
                 height_loss=float(rng.uniform(0.20, 0.25)))
        _, ann = render_phantom(np.random.default_rng(9), SMALL, [f])
        ha, hm, hp, ref = ann["heights"]["T8"]
        loss = 1 - min(ha, hm, hp) / (ref if f["type"] == "crush" else hp)
        assert 0.199 <= loss <= 0.251


def test_normal_vertebrae_vary_less_than_fractures():
    for seed in range(10):
        _, ann = render_phantom(np.random.default_rng(seed), SMALL)
        for ha, hm, hp, ref in ann["heights"].values():
            assert min(ha, hm) / hp > 0.86   # normal variation stays well below grade 1 (20 %)


# ----------------------------------------------------------------------------- output formats / errors

def test_16_bit_png(tmp_path):
    m = synthesize(tmp_path / "x", cfg(n=3, bit_depth=16), progress=False)
    img = Image.open(tmp_path / "x" / m.filename[0])
    assert img.mode in ("I;16", "I;16B", "I")
    a = np.asarray(img)
    assert a.max() > 40000 and a.max() <= 65535 and len(np.unique(a)) > 2000


@pytest.mark.parametrize("field,kw", [
    ("n", dict(n=0)), ("prevalence", dict(prevalence=1.0)), ("prevalence", dict(prevalence=0)),
    ("splits", dict(splits=(0.5, 0.3, 0.3))), ("grades", dict(grades=(0.5, 0.5, 0.5))),
    ("bit_depth", dict(bit_depth=12)), ("size", dict(size=(63, 200))),
])
def test_bad_config(tmp_path, field, kw):
    with pytest.raises(ValueError, match=field):
        synthesize(tmp_path / "y", cfg(**kw), progress=False)
    assert not (tmp_path / "y").exists()


def test_refuses_non_empty_out_and_force_replaces_only_its_own(tmp_path):
    out = tmp_path / "z"
    synthesize(out, cfg(n=4), progress=False)
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        synthesize(out, cfg(n=4), progress=False)
    m = synthesize(out, cfg(n=3, seed=9), force=True, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    assert len(list(out.rglob("*.png"))) == 3 and len(pd.read_csv(out / "manifest.csv")) == len(m) == 3
    synthesize(tmp_path / "empty_ok", cfg(n=2), progress=False)   # a fresh OUT is fine


def test_unknown_level_or_type_rejected():
    with pytest.raises(ValueError, match="level"):
        render_phantom(np.random.default_rng(0), SMALL, [dict(level="C5", grade=1, type="wedge", height_loss=0.2)])
    with pytest.raises(ValueError, match="type"):
        render_phantom(np.random.default_rng(0), SMALL, [dict(level="T8", grade=1, type="burst", height_loss=0.2)])
