"""Per-image intensity normalization applied after decoding (config key `data.normalize`).

`read_image` maps every format to [0, 1] by its nominal range (8-bit / 255, 16-bit / 65535, a DICOM
file by its VOI window or stored range). On top of that:

    seed                   nothing more: 8-bit PNGs / 255 exactly as the notebook's rescale
    minmax                 (x - min) / (max - min) per image
    percentile[:LO,HI]     clip to the LO-th..HI-th percentiles, then scale to [0, 1] (default 1,99)
    equalize[:BINS]        histogram equalization (CDF over BINS bins, default 256), as YUHS-VERTE-X

The setting is part of the resolved config saved in every checkpoint, so `evaluate`, `predict`
and `calibrate` normalize exactly as training did.
"""
from __future__ import annotations

import numpy as np

from vfa.config import ConfigError

MODES = ("seed", "minmax", "percentile", "equalize")


class NormalizeError(ConfigError):
    """An invalid `data.normalize` value."""


def parse(spec: str | None) -> tuple[str, tuple[float, ...]]:
    """'percentile:0.5,99.5' -> ('percentile', (0.5, 99.5)); raises NormalizeError with the valid forms."""
    spec = "seed" if spec in (None, "") else str(spec).strip().lower()
    mode, _, args = spec.partition(":")
    if mode not in MODES:
        raise NormalizeError(f"data.normalize must be one of seed, minmax, percentile[:LO,HI], "
                             f"equalize[:BINS]; got {spec!r}")
    try:
        values = tuple(float(v) for v in args.split(",")) if args else ()
    except ValueError:
        raise NormalizeError(f"data.normalize {spec!r}: expected numbers after ':'") from None
    if mode == "percentile":
        lo, hi = values if len(values) == 2 else (1.0, 99.0) if not values else (-1.0, -1.0)
        if not 0 <= lo < hi <= 100:
            raise NormalizeError(f"data.normalize {spec!r}: need percentile:LO,HI with 0 <= LO < HI <= 100")
        return mode, (lo, hi)
    if mode == "equalize":
        if len(values) > 1 or (values and (values[0] < 2 or values[0] != int(values[0]))):
            raise NormalizeError(f"data.normalize {spec!r}: need equalize or equalize:BINS with BINS >= 2")
        return mode, (int(values[0]) if values else 256,)
    if values:
        raise NormalizeError(f"data.normalize {spec!r}: {mode} takes no arguments")
    return mode, ()


def _scale(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not hi > lo:
        return np.zeros_like(img, dtype=np.float32)
    return np.clip((img - lo) / (hi - lo), 0, 1).astype(np.float32)


def normalize(img: np.ndarray, spec: str | None = "seed") -> np.ndarray:
    """(H, W) float in [0, 1] -> float32 in [0, 1] as `spec` says; a constant image becomes zeros
    under minmax/percentile/equalize."""
    mode, args = parse(spec)
    img = np.asarray(img, dtype=np.float32)
    if mode == "seed":
        return img
    if mode == "minmax":
        return _scale(img, float(img.min()), float(img.max()))
    if mode == "percentile":
        lo, hi = np.percentile(img, args)
        return _scale(img, float(lo), float(hi))
    # equalize: the map x -> CDF(x) over `bins` bins (scikit-image's equalize_hist), scaled so the
    # darkest occupied bin maps to 0 and the brightest to 1
    bins = args[0]
    lo, hi = float(img.min()), float(img.max())
    if not hi > lo:
        return np.zeros_like(img)
    hist, edges = np.histogram(img, bins=bins, range=(lo, hi))
    cdf = np.cumsum(hist).astype(np.float64)
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0]) if cdf[-1] > cdf[0] else np.zeros_like(cdf)
    centers = (edges[:-1] + edges[1:]) / 2
    return np.clip(np.interp(img, centers, cdf), 0, 1).astype(np.float32)
