"""Drawing the clinical phantom: the patient of vfa.phantom.clinical as an attenuation map (bodies with
curved end plates, Schmorl's notches and osteophytes, ribs, shoulders and scapulae over the upper
thoracic spine), then a vendor's acquisition (vfa.phantom.vendors).

The soft tissue and the ribs are the default phantom's (vfa.phantom.synth), unchanged; what is new is
drawn here. Numbers that describe anatomy are ranges drawn per scan; docs/phantom.md gives them.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from vfa.phantom import anatomy, clinical, synth, vendors
from vfa.phantom.synth import _background, _ellipsoid, _ribs, _softmin
from vfa.spine import LEVELS

REFERENCE_SPINE_PX = 870     # T4-L4 length at the default phantom's scale (s = 1)
RETRIES = 8


def _plate_shape(tt):
    """A bump that is 0 at the body's anterior rim, middle and posterior rim (tt = -1, 0, 1), where the
    six points sit: end plates vary in curvature between the points without moving them."""
    return 4 * tt ** 2 * (1 - tt ** 2)


def _body(canvas, i, an, sh, p, tex_seed, mimic):
    """Add body i (cortex, trabecular texture, curved end plates, a Schmorl's notch or an osteophyte
    where `mimic` says) and its faint posterior elements; return its box."""
    f = synth.body_frame(canvas.shape, i, an, sh, 0.9, 0.8)
    u, v, w, ref, ha, kt, tt, hu = (f[k] for k in ("u", "v", "w", "ref", "ha", "kt", "tt", "hu"))
    top = -ref / 2 + kt * (ref - hu) + p["cup"][0] * ref * _plate_shape(tt)
    bot = ref / 2 - (1 - kt) * (ref - hu) - p["cup"][1] * ref * _plate_shape(tt)
    kind = mimic["kind"] if mimic else "none"
    if kind == "schmorl":   # a round notch off the middle, clear of the six points
        uc = (0.2 + 0.12 * mimic["at"]) * w * (1 if mimic["at"] < 0.7 else -1)
        dent = mimic["amount"] * ref * np.exp(-((u - uc) / (0.06 * w)) ** 2)
        top, bot = (top + dent, bot) if mimic["side"] < 0 else (top, bot - dent)
    wall = p["wall"] * w * (1 - np.clip(2 * v / ref, -1, 1) ** 2)
    d = _softmin(p["corner"] * ref, v - top, bot - v, u + w / 2 - wall, w / 2 - u - wall / 2)
    bone, tex = synth.body_bone(d, p, sh, tex_seed)
    if kind == "osteophyte":   # a beak from the anterior rim of an end plate, towards the disc
        side, length = mimic["side"], mimic["amount"] * w
        edge = -ref / 2 + kt * (ref - ha) if side < 0 else ref / 2 - (1 - kt) * (ref - ha)
        spur = _ellipsoid(u, v, -w / 2 - 0.2 * length, edge + side * 0.1 * length, 0.7 * length, 0.09 * ref,
                          side * 0.5)
        bone = bone + 1.2 * p["cortex"] * spur
    return synth.add_body(canvas, f, i, d, bone, tex, p, sh)


def _shoulders(rng, an, shapes, top, H, W, s):
    """Shoulders and scapulae over the upper thoracic spine: an opacity that flattens everything above
    the disc over level `top` (the highest readable one) and starves the beam there (more noise), and
    the scapula's lateral border as a faint oblique band. Returns (opacity, overlay, noise gain)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    above, slope, depth = rng.uniform(0.8, 1.4), rng.uniform(-0.08, 0.08), rng.uniform(0.85, 0.95)
    axis = lambda j: np.array([math.sin(an["phi"][j]), math.cos(an["phi"][j])])   # noqa: E731  (caudal)
    c = lambda j: np.array([an["cx"][j], an["cy"][j]])                              # noqa: E731
    if top > 0:   # the edge runs through the disc between the hidden level and the first readable one
        a, b = c(top - 1) + shapes[top - 1]["ref"] / 2 * axis(top - 1), c(top) - shapes[top]["ref"] / 2 * axis(top)
        centre, phi = (a + b) / 2, (an["phi"][top - 1] + an["phi"][top]) / 2
    else:         # everyone has shoulders; here they end above T4
        centre, phi = c(0) - shapes[0]["ref"] * (0.5 + above) * axis(0), an["phi"][0]
    # along the disc's plane across the spine (so a tilted body is hidden or shown whole), flatter beyond
    reach = 1.2 * an["w"][max(top - 1, 0)]
    y_edge = centre[1] - math.tan(phi) * np.clip(xx - centre[0], -reach, reach) + slope * (xx - centre[0])
    soft = 0.12 * shapes[max(top, 1) - 1]["ref"]
    opacity = depth / (1 + np.exp(-(y_edge - yy) / soft))
    # scapula: its lateral border, from high posterior to lower anterior across the upper levels
    ax, bx = (an["cx"][0] + k * an["w"][0] for k in (rng.uniform(0.5, 2.0), -rng.uniform(1.0, 2.5)))
    by = an["cy"][min(top + 3, 8)]
    dist = ((xx - ax) * by - yy * (bx - ax)) / math.hypot(bx - ax, by)
    band = np.exp(-(dist / (rng.uniform(2.0, 4.0) * s)) ** 2) * (yy < by)
    overlay = rng.uniform(0.03, 0.07) * ndimage.gaussian_filter(band, 2 * s)
    return opacity, overlay, 1 + 2.5 * opacity


def _anatomy(rng, H, W, fractures, mimics):
    """Spine, bodies (deformed, conformed to the rules) and their points; None if the rules disagree."""
    an0 = anatomy.draw_spine(rng, H, W)
    an0 = anatomy._frame(dict(an0, fill=rng.uniform(0.70, 0.80)))[0]   # VFA images show more above/below
    shapes = anatomy.body_shapes(rng, an0, [])
    clinical.conform(shapes, clinical.deform(shapes, fractures, mimics))
    an = anatomy.settle(an0, shapes)
    points = np.stack([anatomy.morphometry_points(an, shapes[i], i) for i in range(len(LEVELS))])
    if not clinical.rules_agree(points, fractures, mimics):
        return None
    return an0, an, shapes, points


def render_clinical(seed_seq: np.random.SeedSequence, size, fractures, mimics, top, look,
                    spine_mm=(310.0, 370.0)):
    """One scan: stored values (uint16, 0..look['max_value']) and its annotation. The anatomy is drawn
    again (a fresh child seed each time, at most RETRIES) in the rare case a body's rules grade would
    not be its drawn grade, so the truth always follows Genant's rules from its own points."""
    H, W = size
    mimics = clinical.kept_mimics(mimics, fractures)
    r_img, *r_try = (np.random.default_rng(s) for s in seed_seq.spawn(1 + RETRIES))
    drawn = next((a for a in (_anatomy(r, H, W, fractures, mimics) for r in r_try) if a is not None), None)
    if drawn is None:
        raise RuntimeError("the clinical phantom could not draw bodies whose rules grades match their truth")
    an0, an, shapes, points = drawn
    spine_px = float(an["cy"][-1] - an["cy"][0] + (shapes[0]["ref"] + shapes[-1]["ref"]) / 2)
    s = spine_px / REFERENCE_SPINE_PX
    pixel_mm = r_img.uniform(*spine_mm) / spine_px
    p = dict(s=s, density=r_img.uniform(0.5, 1.1), trab=r_img.uniform(0.2, 0.3), cortex=r_img.uniform(0.3, 0.5),
             cortex_px=r_img.uniform(1.5, 2.5) * s, texture=r_img.uniform(0.08, 0.2),
             posterior=r_img.uniform(0.1, 0.2), rib=r_img.uniform(0.06, 0.12), rib_w=r_img.uniform(0.4, 0.55),
             wall=r_img.uniform(0.0, 0.05), corner=r_img.uniform(0.05, 0.12))
    cups = r_img.uniform(-0.02, 0.05, (len(LEVELS), 2))
    tex_seeds = r_img.integers(0, 2 ** 63, len(LEVELS))
    canvas = _background(r_img, an, H, W, s)
    canvas += p["density"] * _ribs(r_img, an, dict(an0, cx=an["cx"], cy=an["cy"]), H, W, p)
    boxes = {lv: _body(canvas, i, an, shapes[i], dict(p, cup=cups[i]), tex_seeds[i], mimics.get(lv))
             for i, lv in enumerate(LEVELS)}
    opacity, overlay, gain = _shoulders(r_img, an, shapes, top, H, W, s)
    # the shoulders' soft tissue thickens upwards: brighter, and flat where it hides the spine
    level = r_img.uniform(0.45, 0.6) + r_img.uniform(0.0, 0.3) * np.linspace(1, 0, H, dtype=np.float32)[:, None]
    canvas = canvas * (1 - opacity) + opacity * level + overlay
    stored = vendors.acquire(r_img, canvas, look, pixel_mm, gain)
    ann = dict(size=[H, W], levels=list(LEVELS), boxes=boxes, fractures=fractures, vendor=look["vendor"],
               pixel_mm=round(float(pixel_mm), 4), readable=clinical.readable_flags(top),
               mimics={lv: m["kind"] for lv, m in mimics.items()},
               heights={lv: [round(float(shapes[i][k]), 2) for k in ("ha", "hm", "hp", "ref")]
                        for i, lv in enumerate(LEVELS)},
               points={lv: points[i].round(2).tolist() for i, lv in enumerate(LEVELS)})
    return stored, ann
