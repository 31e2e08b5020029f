"""Tests of the synthetic VFA phantom (vfa.synth): determinism, layout/manifest, real deformities."""
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vfa.phantom.synth import LEVELS, PhantomConfig, render_phantom, synthesize

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
