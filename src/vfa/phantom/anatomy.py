"""The phantom's spine: vertebral geometry along an S-curve, Genant-graded fractures, and how the
column settles onto a collapsed body. vfa.synth renders what this draws.

Everything is in image pixels and drawn from a numpy Generator in a fixed order, so the same
generator state gives the same patient with or without fractures.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import PchipInterpolator

from vfa.spine import FRACTURE_SHAPES, LEVELS

# Osteoporotic fractures cluster at the mid-thoracic (T7-T8) and thoracolumbar (T11-L1) regions.
LEVEL_WEIGHTS = np.array([.02, .03, .06, .11, .11, .07, .06, .10, .15, .13, .07, .05, .04])
GRADE_LOSS = {1: (0.20, 0.25), 2: (0.25, 0.40), 3: (0.40, 0.60)}  # Genant height-loss ranges
TYPE_P = (0.5, 0.3, 0.2)   # P of each of FRACTURE_SHAPES (wedge, biconcave, crush): wedge is the most common
N_FRACTURES_P = (0.6, 0.28, 0.12)                                  # 1, 2 or 3 fractured levels


def sample_fractures(rng: np.random.Generator, grades=(0.4, 0.4, 0.2)) -> list[dict]:
    """Fractures of one positive image: 1-3 distinct levels; the worst grade follows `grades`."""
    k = rng.choice(3, p=N_FRACTURES_P) + 1
    levels = np.sort(rng.choice(len(LEVELS), size=k, replace=False, p=LEVEL_WEIGHTS))
    worst = int(rng.choice(3, p=np.asarray(grades) / sum(grades))) + 1
    # the image's worst grade follows `grades`; any further fractures are no worse than it
    gs = [worst] + [int(rng.integers(1, worst + 1)) for _ in range(k - 1)]
    gs = [gs[j] for j in rng.permutation(k)]
    return [dict(level=LEVELS[lv], grade=g, type=str(rng.choice(FRACTURE_SHAPES, p=TYPE_P)),
                 height_loss=round(float(rng.uniform(*GRADE_LOSS[g])), 4))
            for lv, g in zip(levels, gs)]


def draw_spine(rng: np.random.Generator, H: int, W: int) -> dict:
    """Vertebral centres/tilts/sizes in final image pixels. Draws a fixed number of values."""
    n, t = len(LEVELS), np.linspace(0, 1, len(LEVELS))
    # sizes in units of T4 body height: T4 ~17 mm tall, L4 ~27 mm; AP depth ~1.3-1.45x height
    h = (1.0 + 0.55 * t ** 1.2) * (1 + rng.uniform(-0.04, 0.04, n))
    w = (1.45 - 0.15 * t) * (1.0 + 0.55 * t ** 1.2) * rng.uniform(0.92, 1.08) * (1 + rng.uniform(-0.03, 0.03, n))
    disc = (0.22 + 0.22 * ((np.arange(n - 1) + 0.5) / (n - 1)) ** 1.5) * rng.uniform(0.8, 1.2) \
        * (1 + rng.uniform(-0.15, 0.15, n - 1))
    # S-curve as the tangent tilt along the spine (+ = leaning posteriorly/right when going down):
    # thoracic kyphosis (apex ~T8) turns it from + to -, lumbar lordosis (apex ~L3) back to +.
    kyph, lord = np.radians(rng.uniform(25, 55)), np.radians(rng.uniform(20, 40))
    apex = rng.uniform(3.5, 5.0)
    ctrl_i = [0.0, apex, 8.5, 12.0]
    ctrl_phi = [kyph * apex / 8.5, 0.0, -kyph * (8.5 - apex) / 8.5, -kyph * (8.5 - apex) / 8.5 + lord]
    centre_s = np.concatenate([[h[0] / 2], h[0] / 2 + np.cumsum((h[:-1] + h[1:]) / 2 + disc)])
    total = centre_s[-1] + h[-1] / 2
    s = np.linspace(0, total, 400)
    phi_s = PchipInterpolator(np.interp(ctrl_i, np.arange(n), centre_s), ctrl_phi, extrapolate=True)(s)
    phi_s -= phi_s.mean()                       # patient positioned so the spine runs ~vertically
    phi_s += np.radians(rng.uniform(-5, 5))     # plus a small global rotation
    ds = np.gradient(s)
    x, y = np.cumsum(np.sin(phi_s) * ds), np.cumsum(np.cos(phi_s) * ds)
    cx, cy, phi = (np.interp(centre_s, s, a) for a in (x, y, phi_s))
    an = dict(cx=cx, cy=cy, phi=phi, h=h, w=w, fill=rng.uniform(0.80, 0.90), size=np.array([W, H]))
    an["frame"] = np.array([rng.uniform(0.38, 0.46), rng.uniform(-0.03, 0.03)])   # x share, y offset
    return _frame(an)[0]


def _frame(an: dict) -> tuple[dict, float]:
    """Scale the spine to fill `fill` of the image height (leaves >= 5 % margins, 3 % of them for
    shifting), then put its mean x and vertical mid-point where `frame` says. Returns it, the scale."""
    # vertical extent of the bodies ~ centres +- half heights, plus what the tilted corners add
    half = an["h"] / 2 * np.cos(an["phi"])
    ext_y = np.ptp(np.r_[an["cy"] - half, an["cy"] + half]) + 0.5 * an["w"].mean() * np.ptp(np.sin(an["phi"]))
    k = an["fill"] * an["size"][1] / ext_y
    an = dict(an, **{key: an[key] * k for key in ("cx", "cy", "h", "w")})
    (W, H), (fx, ty) = an["size"], an["frame"]
    an["cy"] = an["cy"] + (H / 2 - (an["cy"].min() + an["cy"].max()) / 2 + ty * H)
    an["cx"] = an["cx"] + (W * fx - an["cx"].mean())
    return an, k


def body_shapes(rng: np.random.Generator, an: dict, fractures: list[dict]) -> list[dict]:
    """Anterior/middle/posterior heights per vertebra: normal variation (<~10 %) then fractures."""
    n, h = len(LEVELS), an["h"]
    thoracic = np.arange(n) < 9
    # normal anatomy: slight anterior wedging in the thoracic spine, slight endplate concavity
    ra = np.where(thoracic, rng.uniform(0.92, 1.0, n), rng.uniform(0.95, 1.03, n))
    rm = rng.uniform(0.94, 1.0, n)
    k_top = rng.uniform(0.55, 0.85, n)     # superior endplate usually takes most of a collapse
    dens = rng.uniform(0.92, 1.08, n)      # level-to-level bone density variation
    out = [dict(ha=h[i] * ra[i], hm=h[i] * rm[i] * (ra[i] + 1) / 2, hp=h[i], ref=h[i],
                k_top=0.5, dens=dens[i], sclerosis=1.0) for i in range(n)]
    for v in out:
        v.update(ha0=v["ha"], hp0=v["hp"])   # pre-fracture rims: how far the column settles (settle)
    for f in fractures:
        if f["level"] not in LEVELS:
            raise ValueError(f"unknown level {f['level']!r}; expected one of {LEVELS}")
        v, loss = out[LEVELS.index(f["level"])], float(f["height_loss"])
        if f["type"] == "wedge":       # anterior collapse, posterior wall intact
            v.update(ha=v["hp"] * (1 - loss), hm=v["hp"] * (1 - loss / 2))
        elif f["type"] == "biconcave":  # central endplate depression
            v.update(hm=v["hp"] * (1 - loss), ha=max(v["ha"], v["hp"] * 0.95))
        elif f["type"] == "crush":     # the whole body loses height (relative to expected size)
            v.update(ha=v["ref"] * (1 - loss), hm=v["ref"] * (1 - loss), hp=v["ref"] * (1 - loss))
        else:
            raise ValueError(f"unknown fracture type {f['type']!r}; expected one of {FRACTURE_SHAPES}")
        # compressed trabeculae keep part of their mass, so a collapsed body looks denser (the reason
        # fractured levels are excluded from DXA BMD); grade 1 stays within the normal +-8 % spread
        v.update(k_top=k_top[LEVELS.index(f["level"])], sclerosis=1 + 0.4 * loss)
    return out


def _axis(an: dict, i: int) -> np.ndarray:
    """Unit vector along vertebra i's axis, pointing caudally."""
    return np.array([math.sin(an["phi"][i]), math.cos(an["phi"][i])])


def _plate(an: dict, shapes: list[dict], i: int, side: int) -> np.ndarray:
    """Centre of vertebra i's upper (side -1) or lower (+1) end plate as it was drawn before collapse."""
    return np.array([an["cx"][i], an["cy"][i]]) + side * shapes[i]["ref"] / 2 * _axis(an, i)


def _rotate(an: dict, last: int, pivot: np.ndarray, alpha: float, shift=0.0) -> None:
    """Rotate vertebrae 0..last (in place) about `pivot` by +alpha in the image, then shift them."""
    rot = np.array([[math.cos(alpha), -math.sin(alpha)], [math.sin(alpha), math.cos(alpha)]])
    pts = (np.stack([an["cx"][:last + 1], an["cy"][:last + 1]], 1) - pivot) @ rot.T + pivot + shift
    an["cx"][:last + 1], an["cy"][:last + 1] = pts[:, 0], pts[:, 1]
    an["phi"][:last + 1] -= alpha


def settle(an: dict, shapes: list[dict]) -> dict:
    """Let the spine settle onto collapsed bodies, as it does in vivo: the discs keep their height,
    so the column above a fracture descends (and, for a wedge, tilts forward: local kyphosis) instead
    of leaving a widened disc space, a cue outside the vertebra that real scans do not show.

    Each end plate moves by its collapse at the anterior and posterior rims (u = -w/2, +w/2); a
    rigid motion of everything cranial to it (translation along the body's axis + rotation about the
    end plate's centre) re-seats the neighbour on it. The discs above then take the tilt back, an
    equal share each, as a patient keeps upright (sagittal balance): otherwise a lumbar wedge would
    tilt the whole thoracic spine by up to 20 degrees, a cue far from the fracture."""
    if all(sh["ha"] == sh["ha0"] and sh["hp"] == sh["hp0"] and sh["k_top"] == 0.5 for sh in shapes):
        return an                                    # no fracture: the very same geometry
    an = {key: np.array(v, dtype=float) for key, v in an.items()}
    for i in reversed(range(len(shapes))):          # caudal first: an upper fracture rides along
        sh = shapes[i]
        kt, ref, w = sh["k_top"], sh["ref"], an["w"][i]
        # end plate displacement at the rims, relative to the body as it was (k_top 0.5)
        drop = lambda share, h, h0: share * (ref - h) - 0.5 * (ref - h0)      # noqa: E731
        for share, first, sign in ((1 - kt, i, 1), (kt, i - 1, -1)):       # bottom plate, then top
            da, dp = drop(share, sh["ha"], sh["ha0"]), drop(share, sh["hp"], sh["hp0"])
            # L4's lower neighbour is not drawn: framing absorbs its settling
            if first < 0 or i == len(shapes) - 1 and sign > 0 or abs(da) + abs(dp) < 1e-9:
                continue
            alpha = (dp - da) / w                    # frame rotation; an image rotation by +alpha
            _rotate(an, first, _plate(an, shapes, i, sign), alpha, (da + dp) / 2 * _axis(an, i))
            for j in range(first - 1, -1, -1):       # disc j (between j and j + 1) turns by -alpha / first
                centre = (_plate(an, shapes, j, 1) + _plate(an, shapes, j + 1, -1)) / 2
                _rotate(an, j, centre, -alpha / first)
    # framed again as any spine is, so a shorter spine is no cue: the bodies (and `shapes`, in
    # place) grow by the ~1-3 % the collapse took from its length
    an, k = _frame(an)
    for sh in shapes:
        sh.update({key: sh[key] * k for key in ("ha", "hm", "hp", "ref", "ha0", "hp0")})
    return an



def morphometry_points(an: dict, sh: dict, i: int) -> np.ndarray:
    """Vertebra i's six points (6 x 2, image x/y) where the rendered end plates meet the anterior
    wall, the body's middle and the posterior wall: the curves vfa.synth draws, so the heights
    between them are exactly the body's ha, hm and hp."""
    c, ax = np.array([an["cx"][i], an["cy"][i]]), _axis(an, i)
    across = np.array([ax[1], -ax[0]])                  # + = posterior (the renderer's u)
    ref, kt, w = sh["ref"], sh["k_top"], an["w"][i]
    pts = []
    for side in (-1, 1):
        for u, hu in ((-w / 2, sh["ha"]), (0.0, sh["hm"]), (w / 2, sh["hp"])):
            v = -ref / 2 + kt * (ref - hu) if side < 0 else ref / 2 - (1 - kt) * (ref - hu)
            pts.append(c + u * across + v * ax)
    return np.array(pts)
