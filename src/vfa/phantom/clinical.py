"""The clinical phantom's patient: fractures, fracture mimics, upper-thoracic visibility, and body
shapes whose Genant grades are what Genant's rules say from their own six points.

Everything a reader fights on a real VFA scan that is a property of the patient lives here, as tables
(the rates and ranges, with their sources in docs/phantom.md); vfa.phantom.clinical_render draws it and
vfa.phantom.vendors gives it a device's look. Nothing here renders, so the per-scan draws (visibility,
mimics, fractures) can be checked by the thousand in milliseconds.
"""
from __future__ import annotations

import numpy as np

from vfa.phantom import anatomy
from vfa.spine import FRACTURE_SHAPES, LEVELS
from vfa.stats.morphometry import GRADE_CUTS, apply_genant_rules, reference_heights

# cumulative share of scans readable from L4 up to each level (the rest start lower)
READABLE_UP_TO = (("T4", 0.82), ("T5", 0.93), ("T6", 0.99), ("T7", 1.0))
FRACTURE_GRADES = (0.48, 0.31, 0.21)        # per fracture: mild about half of all
FRACTURE_TYPES = (0.79, 0.19, 0.02)         # FRACTURE_SHAPES order: wedge, biconcave, crush
# height loss per grade, kept inside Genant's cuts (GRADE_CUTS) so rounding never moves a grade
FRACTURE_LOSS = {1: (0.21, 0.245), 2: (0.26, 0.39), 3: (0.41, 0.58)}
MIMIC_KINDS = ("physiological_wedge", "short_height", "schmorl", "osteophyte")
MIMICS: dict[str, dict] = {      # per-body odds on the levels named; `amount` as the renderer reads it
    "physiological_wedge": dict(levels=("T6", "T7", "T8", "T9", "T11", "T12", "L1"), p=0.20,
                                amount=(0.82, 0.90)),            # anterior / posterior height
    "short_height": dict(levels=LEVELS, p=0.03, amount=(0.08, 0.16)),     # height loss vs neighbours
    "schmorl": dict(levels=LEVELS[3:], p=0.05, amount=(0.08, 0.16)),      # notch depth / body height
    "osteophyte": dict(levels=LEVELS[5:], p=0.06, amount=(0.15, 0.30)),   # spur length / body depth
}
CONFORM_ROUNDS = 6


def draw_visibility(rng: np.random.Generator) -> int:
    """Index (into LEVELS) of the highest readable level of one scan: one draw."""
    u = rng.random()
    return next(LEVELS.index(lv) for lv, cum in READABLE_UP_TO if u < cum)


def readable_flags(top: int) -> list[int]:
    """1 for the levels from `top` down to L4, 0 above (the shoulders hide them)."""
    return [int(i >= top) for i in range(len(LEVELS))]


def sample_clinical_fractures(rng: np.random.Generator, grades=FRACTURE_GRADES) -> list[dict]:
    """Fractures of one positive scan: 1-3 distinct levels (the phantom's level weights); each
    fracture's grade, type and height loss drawn independently, so mild ones are ~half of all."""
    k = rng.choice(3, p=anatomy.N_FRACTURES_P) + 1
    levels = np.sort(rng.choice(len(LEVELS), size=k, replace=False, p=anatomy.LEVEL_WEIGHTS))
    out = []
    for lv in levels:
        g = int(rng.choice(3, p=np.asarray(grades) / sum(grades))) + 1
        kind = str(rng.choice(FRACTURE_SHAPES, p=FRACTURE_TYPES))
        loss = round(float(rng.uniform(*FRACTURE_LOSS[g])), 4)
        out.append(dict(level=LEVELS[lv], grade=g, type=kind, height_loss=loss,
                        k_top=round(float(rng.uniform(0.55, 0.85)), 4)))
    return out


def draw_mimics(rng: np.random.Generator) -> dict[str, dict]:
    """At most one mimic per level: {level: {kind, amount, side, at}}; a fixed number of draws, so
    normal and fractured scans draw them alike (a fractured level drops its mimic later)."""
    u = rng.random((len(LEVELS), 4))
    out = {}
    for i, lv in enumerate(LEVELS):
        acc = 0.0
        for kind in MIMIC_KINDS:
            m = MIMICS[kind]
            acc += m["p"] if lv in m["levels"] else 0.0
            if u[i, 0] < acc:
                lo, hi = m["amount"]
                out[lv] = dict(kind=kind, amount=round(lo + (hi - lo) * float(u[i, 1]), 4),
                               side=-1 if u[i, 2] < 0.5 else 1, at=round(float(u[i, 3]), 4))
                break
    return out


def deform(shapes: list[dict], fractures: list[dict], mimics: dict[str, dict]) -> dict[int, float]:
    """Apply fractures and height-changing mimics to body_shapes' normal bodies (in place). Returns
    {index: height loss against the neighbours} for the bodies whose loss is measured that way
    (crush fractures, short vertebral height), which `conform` then sets."""
    vs_ref = {}
    broken = {f["level"]: f for f in fractures}
    for i, lv in enumerate(LEVELS):
        sh, f, m = shapes[i], broken.get(lv), mimics.get(lv)
        if f is not None:
            loss = float(f["height_loss"])
            if f["type"] == "wedge":
                sh.update(ha=sh["hp"] * (1 - loss), hm=sh["hp"] * (1 - loss / 2))
            elif f["type"] == "biconcave":
                sh.update(hm=sh["hp"] * (1 - loss), ha=max(sh["ha"], sh["hp"] * 0.95))
            else:
                sh.update(ha=sh["hp"], hm=sh["hp"])
                vs_ref[i] = loss
            sh.update(k_top=float(f["k_top"]), sclerosis=1 + 0.4 * loss)
        elif m is not None and m["kind"] == "physiological_wedge":
            sh.update(ha=sh["hp"] * m["amount"], hm=min(sh["hm"], sh["hp"] * (1 + m["amount"]) / 2))
        elif m is not None and m["kind"] == "short_height":
            vs_ref[i] = float(m["amount"])
    return vs_ref


def conform(shapes: list[dict], vs_ref: dict[int, float]) -> None:
    """Scale each body of `vs_ref` so that its posterior height is (1 - loss) times the reference its
    neighbours predict, the reference Genant's rules use (vfa.stats.morphometry.reference_heights).
    The reference moves as the bodies do, so a few rounds settle it."""
    for _ in range(CONFORM_ROUNDS if vs_ref else 0):
        ref = reference_heights([sh["hp"] for sh in shapes], LEVELS)
        for i, loss in vs_ref.items():
            k = ref[i] * (1 - loss) / shapes[i]["hp"]
            shapes[i].update(ha=shapes[i]["ha"] * k, hm=shapes[i]["hm"] * k, hp=shapes[i]["hp"] * k)


def rules_agree(points: np.ndarray, fractures: list[dict], mimics: dict[str, dict]) -> bool:
    """Whether Genant's rules on the bodies' own six points give every drawn fracture its grade and
    type and every other body grade 0 (mimics included), with the points rounded as vertebrae.csv
    stores them."""
    r = apply_genant_rules(np.round(points, 2), list(LEVELS))
    want = {f["level"]: f for f in fractures}
    for i, lv in enumerate(LEVELS):
        f = want.get(lv)
        if int(r["grade"][i]) != (f["grade"] if f else 0) or f and r["type"][i] != f["type"]:
            return False
        if not f and r["height_loss"][i] >= GRADE_CUTS[0]:
            return False
    return True


def kept_mimics(mimics: dict[str, dict], fractures: list[dict]) -> dict[str, dict]:
    """The mimics of levels that are not fractured."""
    broken = {f["level"] for f in fractures}
    return {lv: m for lv, m in mimics.items() if lv not in broken}
