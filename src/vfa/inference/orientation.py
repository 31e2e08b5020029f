"""Which way a lateral spine faces, so that a right-facing scan is read as the model learned to read.

The per-vertebra model reads spines that face the way its training images face: the phantom's (and
the usual VFA display's) faces left, anterior on the left, the posterior elements to the right, and
each body's crop (vfa.models.crops) then has its anterior wall on the crop's left, where the landmark
network puts its `*_ant` points. A right-facing scan read as it is gets its anterior points on the
posterior wall, so ha and hp swap and the wedge ratio inverts. Such a scan is mirrored before it
is read and its points are mirrored back (x -> W - x in corner-origin pixels), so `*_ant` points
lie on the anterior wall of the image as given and the ratios are the body's own.

`vertebra.orientation` says which way the images face:

    left    every image as it is (the training images' orientation); no extra work
    right   every image mirrored
    auto    per image: the DICOM header when it says (Patient Orientation (0020,0020): the row
            direction "A" faces right, "P" faces left; else the row of Image Orientation (Patient)
            (0020,0037) when it runs mostly antero-posterior); otherwise the image, detected as it
            is and mirrored, keeping the orientation in which the reading keeps more bodies (heat
            peaks whose level classifier's answers rise down the spine, `assign_levels`); a tie
            goes to the summed heights of the strongest heat peaks, then to the image as it is.
            A detector trained on one orientation keeps few bodies of a mirrored spine: its level
            classifier's answers no longer rise in order (docs/vertebrae.md gives the phantom's
            numbers), so this needs no label, only two more detector passes per image.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from vfa.config import ORIENTATIONS
from vfa.io.images import is_dicom
from vfa.spine import LEVELS


def header_facing(path) -> str | None:
    """'left' or 'right' as a DICOM file's header states it (anterior on that side), None when the
    file is not DICOM or its header does not say."""
    if not is_dicom(path):
        return None
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                             specific_tags=["PatientOrientation", "ImageOrientationPatient"])
    except Exception:   # the pixels were read already; a header pydicom cannot parse says nothing
        return None
    return _from_patient_orientation(ds.get("PatientOrientation")) or _from_image_orientation(
        ds.get("ImageOrientationPatient"))


def _from_patient_orientation(value) -> str | None:
    """The row direction (the first value) points where the columns increase: "A" (anterior) puts
    the anterior side on the right of the image, "P" on the left; oblique rows ("AF") count by
    their A or P, and a row with neither (or both) says nothing."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    row = str(values[0]).upper() if values else ""
    if ("A" in row) == ("P" in row):
        return None
    return "right" if "A" in row else "left"


def _from_image_orientation(value) -> str | None:
    """The row's direction cosines in the patient's LPS axes (x left, y posterior, z head): a row
    running mostly along y (|y| > 0.5) faces left when it runs posteriorly (y > 0)."""
    try:
        row = [float(v) for v in list(value)[:3]]
    except (TypeError, ValueError):
        return None
    if len(row) < 3 or abs(row[1]) <= 0.5:
        return None
    return "left" if row[1] > 0 else "right"


@torch.no_grad()
def detector_evidence(model, img: torch.Tensor, vcfg) -> torch.Tensor:
    """(B, 2) how much spine the detector finds in each image (B, 1, H, W) as it is (column 0)
    and mirrored (column 1): the summed heights of its strongest heat-map peaks (3x3 maxima above
    vcfg.heat_threshold, as `vfa.inference.vertebra.detect` takes them), at most len(LEVELS)."""
    both = torch.cat([img, img.flip(-1)])
    det_in = F.interpolate(both, size=tuple(vcfg.detector_size), mode="bilinear", antialias=True,
                           align_corners=False)
    heat = model.detector(det_in)["heat"].float().sigmoid()
    peaks = heat * ((heat == F.max_pool2d(heat, 3, 1, 1)) & (heat > vcfg.heat_threshold))
    flat = peaks.flatten(1)
    top = flat.topk(min(len(LEVELS), flat.shape[1]), dim=1).values.sum(1)
    return top.view(2, -1).T.cpu()


def image_facing(model, img: torch.Tensor, vcfg, detect) -> list[str]:
    """'left' or 'right' for each image (B, 1, H, W) by the reading's own evidence: the bodies that
    `detect` (vfa.inference.vertebra.detect, passed in: that module calls this one) keeps in the
    image as it is and mirrored; ties by `detector_evidence`, then as it is."""
    kept = np.array([[len(levels) for _, levels in detect(model, x, vcfg)] for x in (img, img.flip(-1))]).T
    tied = np.flatnonzero(kept[:, 0] == kept[:, 1])
    if len(tied):
        kept = kept.astype(float)
        # at most 13 peak heights below 1, over 14: less than one body, so it only breaks the tie
        kept[tied] += detector_evidence(model, img[tied.tolist()], vcfg).numpy() / (len(LEVELS) + 1)
    return ["right" if mirrored > as_is else "left" for as_is, mirrored in kept]


def facing(model, paths, img: torch.Tensor, vcfg, detect) -> list[str]:
    """'left' or 'right' for each image of the batch `img` (from `paths`), as `vcfg.orientation`
    says: fixed, or (auto) from its DICOM header, else from the image (`image_facing`)."""
    mode = getattr(vcfg, "orientation", "auto")
    if mode not in ORIENTATIONS:
        raise ValueError(f"vertebra.orientation must be one of {ORIENTATIONS}, got {mode!r}")
    if mode != "auto":
        return [mode] * len(paths)
    out = [header_facing(p) for p in paths]
    undecided = [i for i, f in enumerate(out) if f is None]
    if undecided:
        for i, f in zip(undecided, image_facing(model, img[undecided], vcfg, detect)):
            out[i] = f
    return out


def mirror_points(points: np.ndarray, width: float) -> np.ndarray:
    """The same points in the horizontally mirrored image `width` px wide: x -> width - x (corner-
    origin px: the first pixel's centre 0.5 goes to width - 0.5, the last one's centre)."""
    out = np.array(points, dtype=float, copy=True)
    out[..., 0] = width - out[..., 0]
    return out
