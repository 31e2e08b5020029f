"""Synthetic VFA phantom: lateral-spine DXA-like images with Genant-graded vertebral fractures.

No patient images ship with vfa, so this phantom is the default data for the demo, the tests and
model-quality checks. Everything is drawn analytically from a numpy Generator:

    spine (vfa.anatomy: S-curve, 13 vertebrae T4..L4, discs)  ->  fractures (height loss)
    ->  the column settles onto collapsed bodies (unless settle=False)
    ->  rendering (bodies, ribs, soft tissue, bone density, texture, blur, noise, gain/offset)
    ->  uint8/uint16 image + boxes

The only thing that differs between a normal and a fractured image is the deformed vertebral body
itself (shape, and the slight densification of compressed bone): every global parameter is drawn
the same way for both classes so that a model cannot learn a shortcut. The column settles onto a
collapsed body as a real one does (discs keep their height, a wedge adds local kyphosis that the
spine above balances out), see `vfa.anatomy.settle`; `settle=False` is the earlier phantom, whose
neighbours stay put so that the disc spaces next to a collapse widen. Normal images are the same
in both.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy import ndimage

from vfa.phantom import anatomy
from vfa.runs import lock, prepare_run_dir
from vfa.spine import POINTS
from vfa.phantom.anatomy import LEVELS, sample_fractures  # noqa: F401  (vfa.synth's API since the start)

SPLITS = ("train", "val", "test")
GOLDEN = 0.6180339887498949


def check_draws(cfg) -> None:
    """The numbers every phantom config draws with: n, prevalence, splits and grades (each 3 shares)."""
    if int(cfg.n) < 1:
        raise ValueError(f"n must be >= 1, got {cfg.n}")
    if not 0 < cfg.prevalence < 1:
        raise ValueError(f"prevalence must be in (0, 1), got {cfg.prevalence}")
    for name in ("splits", "grades"):
        v = getattr(cfg, name)
        if len(v) != 3 or min(v) < 0 or abs(sum(v) - 1) > 1e-6:
            raise ValueError(f"{name} must be 3 non-negative numbers summing to 1, got {v}")


@dataclass
class PhantomConfig:
    n: int = 1000
    prevalence: float = 0.25
    size: tuple[int, int] = (1024, 614)   # (H, W)
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    grades: tuple[float, float, float] = (0.4, 0.4, 0.2)   # share of grade 1/2/3 among positives
    bit_depth: int = 8        # 8 or 16
    format: str = "png"       # png | dicom (MONOCHROME2 .dcm, fake identifiers) | dicom-mono1 (MONOCHROME1)
    workers: int | None = None  # None = os.cpu_count()
    # the spine settles onto collapsed bodies (vfa.anatomy.settle); False: the earlier phantom, whose
    # widened disc spaces next to a collapse are a cue outside the vertebra (docs/phantom.md)
    settle: bool = True

    def validate(self) -> None:
        check_draws(self)
        if self.format not in ("png", "dicom", "dicom-mono1"):
            raise ValueError(f"format must be png, dicom or dicom-mono1, got {self.format!r}")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {self.bit_depth}")
        if len(self.size) != 2 or min(self.size) < 64:
            raise ValueError(f"size must be (H, W) with both >= 64 px, got {self.size}")
        if int(self.seed) < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1 or None, got {self.workers}")


# ----------------------------------------------------------------------------- rendering

def _softmin(r, *d):
    """Smooth minimum of distances -> rounded corners of radius ~r."""
    acc = -d[0] / r
    for di in d[1:]:
        acc = np.logaddexp(acc, -di / r)
    return -r * acc


def _ellipsoid(u, v, uc, vc, a, b, ang=0.0):
    """Projected thickness of an ellipsoid (soft, dome-shaped) at local coords (u, v)."""
    c, s = math.cos(ang), math.sin(ang)
    du, dv = (u - uc) * c + (v - vc) * s, -(u - uc) * s + (v - vc) * c
    return np.sqrt(np.clip(1 - (du / a) ** 2 - (dv / b) ** 2, 0, 1))


def body_frame(shape, i, an, sh, front: float, above: float) -> dict:
    """Body i's local frame: its numbers (cx, cy, w, ref, ha, hm, hp, kt), its window x0:x1, y0:y1 on a
    canvas of `shape` (reaching `front` body widths anterior and `above` heights cranial of the centre),
    the local coordinates u (+ posterior) and v (+ caudal) of the window's pixels, and tt (u in half
    widths, clipped) and hu, the quadratic through the anterior, middle and posterior heights."""
    H, W = shape
    # python floats keep the per-pixel maths in float32 (numpy scalars would promote to float64)
    cx, cy, phi, w, ref = (float(a) for a in (an["cx"][i], an["cy"][i], an["phi"][i], an["w"][i], sh["ref"]))
    eu, ev = (math.cos(phi), -math.sin(phi)), (math.sin(phi), math.cos(phi))
    ha, hm, hp, kt = (float(sh[k]) for k in ("ha", "hm", "hp", "k_top"))
    corners = np.array([[uu, vv] for uu in (-front * w, 2.2 * w) for vv in (-above * ref, 0.9 * ref)])
    pts = np.array([cx, cy]) + corners[:, :1] * np.array(eu) + corners[:, 1:] * np.array(ev)
    x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int), [W, H])
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    u = (xx - cx) * eu[0] + (yy - cy) * eu[1]          # + = posterior (right)
    v = (xx - cx) * ev[0] + (yy - cy) * ev[1]          # + = caudal (down)
    tt = np.clip(u / (w / 2), -1, 1)
    hu = hm + (hp - ha) / 2 * tt + ((ha + hp) / 2 - hm) * tt ** 2
    return {"w": w, "ref": ref, "ha": ha, "kt": kt, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "u": u, "v": v,
            "tt": tt, "hu": hu}


def body_bone(d, p, sh, tex_seed):
    """(bone, tex): the body inside the signed distance d (cortical rim, trabecular texture)."""
    body = np.clip(d + 0.5, 0, 1)
    rim = body * np.exp(-np.maximum(d, 0) / p["cortex_px"])
    noise = np.random.default_rng(tex_seed).standard_normal(d.shape, dtype=np.float32)
    tex = ndimage.gaussian_filter(noise, (1.6 * p["s"], 0.7 * p["s"]))
    tex *= p["texture"] / (tex.std() + 1e-6)
    return (body * (p["trab"] * (1 + tex)) + p["cortex"] * rim) * float(sh["sclerosis"]), tex


def add_body(canvas, f: dict, i: int, d, bone, tex, p, sh) -> list[int]:
    """Add the bone and the faint posterior elements (pedicle, articular processes, lamina + spinous
    process, more caudal in the thoracic spine) to the canvas; return the body's box."""
    u, v, w, ref = f["u"], f["v"], f["w"], f["ref"]
    thor = i < 9
    pe = (_ellipsoid(u, v, 0.72 * w, -0.15 * ref, 0.32 * w, 0.16 * ref)
          + 0.8 * _ellipsoid(u, v, 0.95 * w, 0.05 * ref, 0.14 * w, 0.5 * ref)
          + 0.7 * _ellipsoid(u, v, (1.4 if thor else 1.3) * w, (0.4 if thor else 0.1) * ref,
                             0.5 * w, 0.16 * ref, -0.5 if thor else -0.15))
    x0, y0 = f["x0"], f["y0"]
    canvas[y0:f["y1"], x0:f["x1"]] += float(sh["dens"]) * p["density"] * (bone + p["posterior"] * (1 + tex) * pe)
    rows, cols = np.nonzero(d > 0)
    return [int(x0 + cols.min()), int(y0 + rows.min()), int(x0 + cols.max() + 1), int(y0 + rows.max() + 1)]


def _vertebra(canvas, i, an, sh, p, tex_seed):
    """Add body (+ cortical rim, trabecular texture) and faint posterior elements; return its box."""
    f = body_frame(canvas.shape, i, an, sh, 0.6, 0.7)
    u, v, w, ref, kt, hu = f["u"], f["v"], f["w"], f["ref"], f["kt"], f["hu"]
    # body: endplates are the quadratic through anterior/middle/posterior heights
    top, bot = -ref / 2 + kt * (ref - hu), ref / 2 - (1 - kt) * (ref - hu)
    wall = 0.03 * w * (1 - np.clip(2 * v / ref, -1, 1) ** 2)   # slightly concave anterior wall
    d = _softmin(0.08 * ref, v - top, bot - v, u + w / 2 - wall, w / 2 - u - wall / 2)
    bone, tex = body_bone(d, p, sh, tex_seed)
    return add_body(canvas, f, i, d, bone, tex, p, sh)


def _ribs(rng, an, cage, H, W, p):
    """Both sides' ribs (T2-T12) as curved bands with brighter cortical edges, over the thorax.
    Each rib's head sits on its vertebra (`an`), its far end on `cage`, whose sizes and mean tilt
    also shape it (render_phantom: the spine before settling, moved with each vertebra)."""
    layers, i = [], np.arange(-2, 9)                     # T2..T12 (T2/T3 extrapolated upwards)
    ext = lambda a: np.where(i < 0, a[0] + i * (a[1] - a[0]), a[np.maximum(i, 0)])  # noqa: E731
    w, h = ext(cage["w"]), ext(cage["h"])
    heads, ends = (np.stack([ext(a["cx"]), ext(a["cy"])], 1) for a in (an, cage))
    phi = cage["phi"][:9].mean()   # ribs hang from the thorax as a whole, not from each vertebra's tilt
    eu, ev = np.array([np.cos(phi), -np.sin(phi)]), np.array([np.sin(phi), np.cos(phi)])
    jitter = rng.uniform(-0.12, 0.12, (2, len(i), 4))
    side_off = rng.uniform(0.2, 0.5) * h[0]
    b = np.linspace(0, 1, 20)[:, None]
    for side in range(2):
        img = Image.new("F", (W // 2, H // 2))
        draw = ImageDraw.Draw(img)
        for k in range(len(i)):
            j = jitter[side, k]
            ctrl = np.array([[0.75, -0.1], [2.3 + j[0], 0.2 + j[1]], [0.3, 2.4 + j[2]], [-3.6, 3.4 + j[3]]])
            ctrl = ctrl * [w[k], h[k]] * (1 + 0.08 * side) + [0, side * side_off]
            P = np.stack([heads[k], ends[k], ends[k], ends[k]]) + ctrl[:, :1] * eu + ctrl[:, 1:] * ev
            bern = np.hstack([(1 - b) ** 3, 3 * (1 - b) ** 2 * b, 3 * (1 - b) * b ** 2, b ** 3])
            curve = bern @ P / 2                              # cubic Bezier, on the half-res canvas
            tang = np.gradient(curve, axis=0)
            normal = np.stack([-tang[:, 1], tang[:, 0]], 1) / np.linalg.norm(tang, axis=1, keepdims=True)
            for frac, val in ((1.0, 1.0), (0.6, 0.6)):     # hollow band: brighter cortical edges
                off = normal * p["rib_w"] * h[k] / 4 * frac
                draw.polygon([tuple(q) for q in np.concatenate([curve + off, (curve - off)[::-1]])], fill=val)
        layers.append(np.asarray(img))
    ribs = ndimage.gaussian_filter(layers[0] + layers[1], 1.5 * p["s"])   # ribs are round, soft-edged
    return p["rib"] * np.asarray(Image.fromarray(ribs).resize((W, H), Image.BILINEAR))


def _background(rng, an, H, W, s):
    """Soft tissue: dark lung anterior to the thoracic spine, denser abdomen, back muscles, air.
    All of it is smooth, so it is computed on a coarse grid and upsampled (saves ~20 ms/image)."""
    f = max(1, int(4 * s))
    h, w = -(-H // f), -(-W // f)
    y = ((np.arange(h) + 0.5) * f)[:, None]
    x = ((np.arange(w) + 0.5) * f)[None, :]
    xc = np.interp(y, an["cy"], an["cx"])                 # spine centre line per row
    rel = (x - xc) / np.interp(y, an["cy"], an["w"])       # 0 = spine centre, + = posterior
    y_dia = np.interp(rng.uniform(6.5, 9.0), np.arange(13), an["cy"]) + rng.uniform(0.1, 0.5) * (x - xc)
    sig = lambda z: 1 / (1 + np.exp(-z))                    # noqa: E731
    thorax = sig((y_dia - y) / (12 * s))
    bg = (rng.uniform(0.15, 0.3) + rng.uniform(0, 0.08) * y / H
          - rng.uniform(0.06, 0.14) * thorax * (1 - 0.7 * np.exp(-(rel - 0.3) ** 2 / 1.5))
          + rng.uniform(0.0, 0.08) * sig((rel - 1.0) / 0.4)                           # back muscles
          + rng.uniform(0.03, 0.08) * np.exp(-(rel - 0.2) ** 2 / 0.8)                 # paraspinal band
          - rng.uniform(0.1, 0.2) * sig((rel - rng.uniform(2.6, 3.6)) / 0.08))        # skin -> air
    low = Image.fromarray(rng.normal(0, 0.02, (4, 3)).astype(np.float32)).resize((w, h), Image.BICUBIC)
    bg = Image.fromarray((bg + np.asarray(low)).astype(np.float32)).resize((w * f, h * f), Image.BILINEAR)
    return np.array(bg)[:H, :W]


def render_phantom(rng: np.random.Generator, size=(1024, 614), fractures: list[dict] | None = None,
                   bit_depth=8, settle: bool = True) -> tuple[np.ndarray, dict]:
    """One image (uint8 or uint16, H×W) and its annotation dict (levels, boxes, fractures with
    level/grade/type/height_loss).

    Every random draw happens in a fixed order that does not depend on `fractures`, so the same rng
    state with and without fractures gives the same patient, differing only at the fractured levels
    and (with `settle`, the default) in the spine's alignment, which settles onto the collapsed bodies.
    Boxes are [x0, y0, x1, y1] in pixels of the final image (x1/y1 exclusive).
    """
    H, W = size
    fractures = list(fractures or [])
    s = H / 1024                                           # pixel scale relative to the default size
    an0 = anatomy.draw_spine(rng, H, W)
    shapes = anatomy.body_shapes(rng, an0, fractures)
    an = anatomy.settle(an0, shapes) if settle else an0
    p = dict(s=s, density=rng.uniform(0.5, 1.1),           # bone density -> bone/soft-tissue contrast
             trab=rng.uniform(0.2, 0.3), cortex=rng.uniform(0.3, 0.5), cortex_px=rng.uniform(1.5, 2.5) * s,
             texture=rng.uniform(0.08, 0.2), posterior=rng.uniform(0.1, 0.2),
             rib=rng.uniform(0.04, 0.09), rib_w=rng.uniform(0.4, 0.55))
    tex_seeds = rng.integers(0, 2 ** 63, len(LEVELS))
    # the trunk follows the settled spine, and each rib moves with its vertebra without turning
    # (its shape and slope come from the spine as it was): nothing spine-wide tells a fracture
    canvas = _background(rng, an, H, W, s)
    canvas += p["density"] * _ribs(rng, an, dict(an0, cx=an["cx"], cy=an["cy"]), H, W, p)
    boxes = {lv: _vertebra(canvas, i, an, shapes[i], p, tex_seeds[i]) for i, lv in enumerate(LEVELS)}
    # acquisition: scanner blur, quantum noise (+ faint scan-line noise), gain/offset
    canvas = ndimage.gaussian_filter(canvas, rng.uniform(0.7, 1.6) * s)
    # quantum noise per pixel scales with pixel size (same dose per area): an image rendered
    # small looks like a large one binned down, not like a noisier scan
    noise = rng.standard_normal((H, W), dtype=np.float32) * (rng.uniform(0.012, 0.035) * s)
    noise += rng.standard_normal((H, 1), dtype=np.float32) * (rng.uniform(0.0, 0.006) * s)
    img = rng.uniform(-0.04, 0.06) + rng.uniform(0.75, 1.0) * canvas + noise
    top = 255 if bit_depth == 8 else 65535
    img = np.round(np.clip(img, 0, 1) * top).astype(np.uint8 if bit_depth == 8 else np.uint16)
    ann = dict(size=[H, W], levels=list(LEVELS), boxes=boxes, fractures=fractures,
               heights={lv: [round(float(shapes[i][k]), 2) for k in ("ha", "hm", "hp", "ref")]
                        for i, lv in enumerate(LEVELS)},
               points={lv: anatomy.morphometry_points(an, shapes[i], i).round(2).tolist()
                       for i, lv in enumerate(LEVELS)})
    return img, ann


# ----------------------------------------------------------------------------- dataset

def _labels(cfg: PhantomConfig) -> np.ndarray:
    """Label of image i from a golden-ratio sequence: prevalence holds even for tiny n, and label i
    does not depend on n (so image i is the same image whatever the dataset size)."""
    u0 = np.random.default_rng([cfg.seed, 1]).random()
    return (((u0 + np.arange(cfg.n) * GOLDEN) % 1.0) < cfg.prevalence).astype(int)


def _splits(labels: np.ndarray, cfg: PhantomConfig) -> np.ndarray:
    """Stratified, deterministic split assignment (each split gets ~the overall prevalence)."""
    split = np.empty(len(labels), dtype=object)
    for c in (0, 1):
        idx = np.random.default_rng([cfg.seed, 2, c]).permutation(np.flatnonzero(labels == c))
        cuts = np.round(np.cumsum(cfg.splits) * len(idx)).astype(int)
        for name, part in zip(SPLITS, np.split(idx, cuts[:-1])):
            split[part] = name
    return split


def _make_one(job) -> dict:
    """Worker: render image i from its own child seed, write the PNG, return its manifest row."""
    i, label, split, out, cfg = job
    r_frac, r_img = (np.random.default_rng(s) for s in np.random.SeedSequence([cfg.seed, 0, i]).spawn(2))
    fractures = sample_fractures(r_frac, cfg.grades) if label else []
    img, ann = render_phantom(r_img, tuple(cfg.size), fractures, cfg.bit_depth, getattr(cfg, "settle", True))
    fmt = getattr(cfg, "format", "png")
    rel = f"{split}/{'frac' if label else 'norm'}/phantom_{i:05d}.{'png' if fmt == 'png' else 'dcm'}"
    if fmt == "png":
        Image.fromarray(img).save(Path(out) / rel, compress_level=1)   # noise is incompressible anyway
    else:
        from vfa.io.dicom import write_dicom

        write_dicom(Path(out) / rel, img, monochrome1=fmt == "dicom-mono1", patient_id=f"PHANTOM-P{i:05d}")
    fr = sorted(fractures, key=lambda f: LEVELS.index(f["level"]))
    return dict(_vertebrae=vertebra_rows(rel, ann), filename=rel, split=split, label=int(label), patient_id=f"P{i:05d}",
                n_fractures=len(fr), max_grade=max([f["grade"] for f in fr], default=0),
                levels=";".join(f["level"] for f in fr), types=";".join(f["type"] for f in fr),
                grades=";".join(str(f["grade"]) for f in fr), boxes=json.dumps(ann["boxes"]),
                fractured_boxes=json.dumps([ann["boxes"][f["level"]] for f in fr]))


def vertebra_rows(rel: str, ann: dict) -> list[dict]:
    """The per-vertebra truth of one image (vertebrae.csv, docs/vertebrae.md): level, the six
    morphometry points, box (the points' bounds), heights, Genant grade, type and height loss."""
    broken = {f["level"]: f for f in ann["fractures"]}
    rows = []
    for lv in LEVELS:
        pts = np.asarray(ann["points"][lv])
        f = broken.get(lv, {})
        row = dict(filename=rel, level=lv)
        row.update({f"{name}_{ax}": float(pts[j, k]) for j, name in enumerate(POINTS)
                    for k, ax in enumerate("xy")})
        row.update(x0=float(pts[:, 0].min()), y0=float(pts[:, 1].min()),
                   x1=float(pts[:, 0].max()), y1=float(pts[:, 1].max()))
        row.update(zip(("ha", "hm", "hp"), ann["heights"][lv][:3]))
        row.update(grade=int(f.get("grade", 0)), type=f.get("type", "normal"),
                   height_loss=float(f.get("height_loss", 0.0)))
        rows.append(row)
    return rows


def phantom_config(preset: str | None = None, **given) -> PhantomConfig:
    """A PhantomConfig from a training preset's phantom defaults (`vfa synth --preset cpu-demo`:
    what that preset trains on), with the given (not None) values on top."""
    from vfa import config as config_mod

    values = dict(config_mod.resolve(preset or "seed").synth)
    values.update({k: v for k, v in given.items() if v is not None})
    if "size" in values:
        values["size"] = tuple(values["size"])
    try:
        cfg = PhantomConfig(**values)
        cfg.validate()
    except (TypeError, ValueError) as exc:
        raise config_mod.ConfigError(f"phantom: {exc}") from None
    return cfg


def synthesize(out: str | Path, cfg: PhantomConfig, progress: bool = True, force: bool = False) -> pd.DataFrame:
    """Write the whole phantom dataset and manifest.csv atomically enough (the files first, the
    manifest last, through a temp file and os.replace); returns the manifest.

    Layout: OUT/{train,val,test}/{norm,frac}/phantom_NNNNN.png + OUT/manifest.csv. Refuses a
    non-empty OUT unless force=True, which removes only what this function writes.
    """
    with lock(out):  # one writer per output folder
        return _synthesize(out, cfg, progress, force)


def make_images(out, cfg, force: bool, make_one, progress: bool, desc: str = "phantom",
                max_chunk: int = 16) -> tuple[Path, list[dict]]:
    """The phantom's folders, then `make_one((i, label, split, out, cfg))` for every image, in worker
    processes; returns (out, the manifest rows in image order). Each worker writes its own images
    and returns only the small row."""
    cfg.validate()
    prepare_run_dir(Path(out), force, command="synth")  # force replaces only a phantom's own files
    out = Path(out)
    for name in SPLITS:
        for cls in ("norm", "frac"):
            (out / name / cls).mkdir(parents=True, exist_ok=True)
    labels = _labels(cfg)
    jobs = [(i, labels[i], sp, str(out), cfg) for i, sp in enumerate(_splits(labels, cfg))]
    workers = min(cfg.workers or os.cpu_count() or 1, cfg.n)
    with Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        chunk = max(1, min(max_chunk, cfg.n // (4 * workers)))
        it = pool.imap(make_one, jobs, chunksize=chunk) if pool else map(make_one, jobs)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, total=cfg.n, desc=desc, unit="img")
        return out, list(it)


def _synthesize(out, cfg: PhantomConfig, progress: bool, force: bool) -> pd.DataFrame:
    out, rows = make_images(out, cfg, force, _make_one, progress)
    vertebrae = pd.DataFrame([v for row in rows for v in row.pop("_vertebrae")])
    tmp = out / "vertebrae.csv.tmp"
    vertebrae.to_csv(tmp, index=False, float_format="%.2f")
    os.replace(tmp, out / "vertebrae.csv")
    manifest = pd.DataFrame(rows)
    tmp = out / "manifest.csv.tmp"
    manifest.to_csv(tmp, index=False)
    os.replace(tmp, out / "manifest.csv")
    return manifest
