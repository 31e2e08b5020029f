"""How well a heatmap points at the fractured vertebrae: the pointing game and the heatmap mass
inside the fractured boxes, with Wilson CIs, and the phantom manifest's boxes."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np

from vfa.config import ConfigError


def box_mask(shape: tuple[int, int], boxes) -> np.ndarray:
    """Union of [x0, y0, x1, y1] boxes (original pixels, end exclusive) as a boolean (H, W) mask."""
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(int(y0), 0):int(y1), max(int(x0), 0):int(x1)] = True
    return mask


# Zhang et al. (2018, "Top-down neural attention by excitation backprop") count a hit within 15 px
# of the annotation; a collapsed vertebra's signal also sits on its endplates and widened discs.
POINTING_TOLERANCE_PX = 15


def localize(heat: np.ndarray, boxes, tolerance: float = POINTING_TOLERANCE_PX) -> dict:
    """Pointing game hit (the map's maximum inside a box; and within `tolerance` px of one) and the
    share of heatmap mass inside the boxes."""
    mask = box_mask(heat.shape, boxes)
    total = float(heat.sum())
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    dist = min((math.hypot(max(x0 - c, 0, c - (x1 - 1)), max(y0 - r, 0, r - (y1 - 1)))
                for x0, y0, x1, y1 in boxes), default=math.inf)
    return {"pointing_hit": bool(mask[r, c]), "pointing_hit_tol": bool(dist <= tolerance),
            "mass_in_boxes": float(heat[mask].sum() / total) if total > 0 else math.nan}


def summarize(rows) -> dict:
    """Pointing game with its Wilson 95 % CI and mean heatmap mass in boxes, over rows that have boxes."""
    from vfa.stats.accuracy import wilson

    rows = [r for r in rows if int(r.get("n_boxes") or 0) > 0]
    hits = sum(str(r["pointing_hit"]) in ("True", "1", "true") for r in rows)
    hits_tol = sum(str(r.get("pointing_hit_tol")) in ("True", "1", "true") for r in rows)
    mass = [float(r["mass_in_boxes"]) for r in rows if r["mass_in_boxes"] not in ("", None)
            and not math.isnan(float(r["mass_in_boxes"]))]
    n = len(rows)
    return {"n_fractured": n, "pointing_hits": hits, "pointing_game": hits / n if n else math.nan,
            "pointing_game_ci": list(wilson(hits, n)),
            f"pointing_game_tol{POINTING_TOLERANCE_PX}px": hits_tol / n if n else math.nan,
            f"pointing_game_tol{POINTING_TOLERANCE_PX}px_ci": list(wilson(hits_tol, n)),
            "mass_in_boxes": float(np.mean(mass)) if mass else math.nan,
            "mass_in_boxes_median": float(np.median(mass)) if mass else math.nan,
            "definition": "pointing game: share of fractured images whose heatmap maximum (at original "
                          "resolution) lies inside a fractured vertebra's box (tolN: within N px of one, as "
                          "Zhang et al. 2018); 95 % CI Wilson. Mass: share of "
                          "the heatmap's sum inside those boxes, mean over the same images."}


def read_manifest(path: str | Path) -> dict[str, list]:
    """{resolved image path: fractured boxes} from a phantom manifest (filenames relative to its folder)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"boxes file not found: {path}")
    frame = pd.read_csv(path)
    if not {"filename", "fractured_boxes"} <= set(frame.columns):
        raise ConfigError(f"{path}: needs 'filename' and 'fractured_boxes' columns (as vfa synth writes)")
    return {os.path.realpath(path.parent / f): json.loads(b) if isinstance(b, str) and b else []
            for f, b in zip(frame["filename"], frame["fractured_boxes"])}


def find_manifest(data: str | Path) -> Path | None:
    """A phantom's manifest.csv in `data` or its parent (DATA/test -> DATA/manifest.csv)."""
    for d in (Path(data), Path(data).parent):
        m = d / "manifest.csv"
        if m.is_file():
            with open(m, newline="") as f:
                if "fractured_boxes" in (next(csv.reader(f), None) or []):
                    return m
    return None
