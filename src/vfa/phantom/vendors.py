"""Vendor looks of the clinical phantom: vfa.vendors' table (one row per device family), read by `acquire`.

A vendor is a table row, not a branch: everything that differs between two looks (matrix size,
resolution, sampling pitch, noise, gray mapping, bit depth, DICOM export) is a number here, and
`acquire` turns the same rendered attenuation map into either look. docs/phantom.md lists each
value with its source, or marks it as an assumption where no published figure was found.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

# the table itself lives in vfa.vendors (data only), which the vendor augmentation reads too
from vfa.vendors import MIXED, MTF10_SIGMA, VENDOR_CHOICES, VENDORS  # noqa: F401  (re-exported)


def pick_vendor(rng: np.random.Generator, vendor: str) -> str:
    """The vendor of one image: `vendor` itself, or either with equal odds for `mixed`. Always one draw,
    so the rest of the image's stream does not depend on the choice."""
    u = rng.random()
    if vendor == MIXED:
        names = sorted(VENDORS)
        return names[min(int(u * len(names)), len(names) - 1)]
    if vendor not in VENDORS:
        raise ValueError(f"vendor must be one of {', '.join(VENDOR_CHOICES)}, got {vendor!r}")
    return vendor


def draw_look(rng: np.random.Generator, vendor: str) -> dict:
    """One scan's acquisition parameters, drawn from the vendor's ranges (a fixed number of draws)."""
    v = VENDORS[vendor]
    u = lambda lo_hi: float(rng.uniform(*lo_hi))   # noqa: E731
    return dict(vendor=vendor, rows=int(round(u(v["rows"]))), cols=int(round(u(v["cols"]))),
                lp_mm=u(v["lp_mm"]), cross=u(v["cross"]), pitch_mm=u(v["pitch_mm"]), noise=u(v["noise"]),
                gamma=u(v["gamma"]), lo=u(v["window"][0]), hi=u(v["window"][1]),
                bits_stored=v["bits_stored"], max_value=v["max_value"], photometric=v["photometric"])


def _resample(img: np.ndarray, pixel_mm: float, pitch_mm: float) -> np.ndarray:
    """A scanner sampling at `pitch_mm`, interpolated to the output matrix: box-average down, bilinear up."""
    if pitch_mm <= pixel_mm:
        return img
    H, W = img.shape
    h, w = max(2, round(H * pixel_mm / pitch_mm)), max(2, round(W * pixel_mm / pitch_mm))
    small = Image.fromarray(img.astype(np.float32)).resize((w, h), Image.BOX)
    return np.asarray(small.resize((W, H), Image.BILINEAR))


def acquire(rng: np.random.Generator, atten: np.ndarray, look: dict, pixel_mm: float,
            noise_gain: np.ndarray | float = 1.0) -> np.ndarray:
    """Attenuation map (float, ~0..1, bone bright) -> stored values (uint16, 0..max_value).

    Order as on a scanner: resolution (blur from lp/mm, anisotropic), sampling pitch, quantum noise
    (scaled by `noise_gain`, e.g. where the shoulders starve the beam), then the gray mapping the
    export applies (gamma, a percentile window) and quantisation to the vendor's value range."""
    sig_along = MTF10_SIGMA / look["lp_mm"] / pixel_mm
    sig_across = MTF10_SIGMA / (look["lp_mm"] * look["cross"]) / pixel_mm
    img = ndimage.gaussian_filter(atten.astype(np.float32), (sig_along, sig_across))
    img = _resample(img, pixel_mm, look["pitch_mm"])
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(look["noise"])
    img = img + noise * np.asarray(noise_gain, dtype=np.float32)
    lo, hi = np.percentile(img, [look["lo"], look["hi"]])
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) ** look["gamma"]
    return np.round(img * look["max_value"]).astype(np.uint16)


def to_display(stored: np.ndarray, look: dict, bit_depth: int = 8) -> np.ndarray:
    """Stored values -> a full-range 8- or 16-bit image (what a PNG export of the scan holds)."""
    top = 255 if bit_depth == 8 else 65535
    out = np.round(stored.astype(np.float64) * (top / look["max_value"]))
    return out.astype(np.uint8 if bit_depth == 8 else np.uint16)
