"""The DXA vendor looks as data: one row per device family (torch-free, numpy-free).

The clinical phantom (vfa.phantom.vendors) renders each look from these rows, and the image-level
`vendor` augmentation preset (vfa.config) takes its ranges from the very same rows, so the two cannot
drift apart. It sits below both (vfa.data and vfa.phantom are siblings that cannot import each other).
docs/phantom.md lists each value with its source, or marks it as an assumption.
"""
from __future__ import annotations

import math

# the standard deviation of a Gaussian blur whose MTF falls to 10 % at f lp/mm is this / f mm
MTF10_SIGMA = math.sqrt(math.log(10) / 2) / math.pi

VENDORS: dict[str, dict] = {
    "hologic": dict(
        rows=(1248, 1656), cols=(567, 603),   # output matrix (H, W)
        lp_mm=(0.9, 1.5),                     # limiting resolution along the scan lines
        cross=(0.75, 0.95),                   # resolution across the scan lines, a share of lp_mm
        pitch_mm=(0.0, 0.0),                  # native sampling pitch; 0: sampled at the output pixel
        noise=(0.015, 0.035),                 # quantum noise sd, a share of the attenuation range
        gamma=(0.8, 1.1), window=((0.2, 2.0), (98.5, 99.8)),   # percentiles mapped to 0 and full scale
        bits_stored=12, max_value=4000,       # DICOM values and their ceiling
        photometric="MONOCHROME2", sop="secondary-capture",
    ),
    "lunar": dict(
        rows=(880, 1080), cols=(400, 460),
        lp_mm=(0.4, 0.6), cross=(0.8, 1.0),
        pitch_mm=(0.6, 0.9),
        noise=(0.025, 0.05),
        gamma=(1.0, 1.4), window=((0.5, 4.0), (97.0, 99.5)),
        bits_stored=8, max_value=255,
        photometric="MONOCHROME2", sop="secondary-capture",
    ),
}
# the image height in mm a VFA scan covers (T4 to L4 and margins; the clinical phantom draws 430-510):
# an assumption that turns the table's blur in mm into a share of the image (the `vendor` augmentation)
FIELD_MM = 470.0
MIXED = "mixed"
VENDOR_CHOICES = (*VENDORS, MIXED)


def span(key: str, index: int | None = None) -> tuple[float, float]:
    """The lowest and highest value of a ranged field over all vendors (`window` needs index 0 or 1)."""
    ranges = [v[key] if index is None else v[key][index] for v in VENDORS.values()]
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def augment_ranges() -> dict:
    """The ranges of the image-level `vendor` augmentation (vfa.config.AugmentConfig's fields), such
    that an image of either look can be made to resemble the other's."""
    lp, cross, gamma = span("lp_mm"), span("cross"), span("gamma")
    sharpest, softest = MTF10_SIGMA / (lp[1] * cross[1]), MTF10_SIGMA / (lp[0] * cross[0])   # blur sd, mm
    lo, hi, noise = span("window", 0), span("window", 1), span("noise")
    return dict(
        # the extra blur that takes the sharpest look to the softest, as a share of the scan's length
        blur=round(math.sqrt(softest ** 2 - sharpest ** 2) / FIELD_MM, 5),
        gamma=round(math.log(gamma[1] / gamma[0]), 4),                # any look's gray mapping to any other's
        contrast=round(max(lo[1] - lo[0], hi[1] - hi[0]) / 100, 4),   # the windows' spread of percentiles
        # the noise that takes the quietest look to the noisiest, at the smallest matrix
        noise=round(math.sqrt(noise[1] ** 2 - noise[0] ** 2), 4),
        noise_rows=min(int(v["rows"][0]) for v in VENDORS.values()))
