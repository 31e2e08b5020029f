"""Secondary Capture overlays vfa returns beside a DICOM image (highdicom's SCImage), and the
pictures in them: a banner above the image (research use, P(fracture), the call at the threshold)
over the heatmap overlay, the per-vertebra outlines, or the plain source image."""
from __future__ import annotations

import numpy as np

from vfa.io.dicom_sr import RESEARCH_TEXT
from vfa.spine import draw_outlines

MIN_WIDTH = 480
_REFERENCE_KEYWORDS = ("SOPClassUID", "SOPInstanceUID")


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=max(int(size), 6))


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Gray in [0, 1] (H, W) or RGB uint8 (H, W, 3) -> RGB uint8."""
    image = np.asarray(image)
    if image.ndim == 3:
        return image.astype(np.uint8)
    return np.repeat((np.clip(image, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def banner_lines(p: float, positive: bool, threshold: float, what: str) -> list[str]:
    call = "fracture suspected" if positive else "no fracture found"
    return [RESEARCH_TEXT.upper().replace("VFA", "vfa"), f"P(fracture) = {p:.2f}: {call} (threshold {threshold:.2f})",
            what]


def enlarge(image: np.ndarray) -> np.ndarray:
    """A small image enlarged (nearest neighbour, integer factor) so that burned-in text stays legible."""
    k = -(-MIN_WIDTH // image.shape[1])
    return image.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else image


def with_banner(image: np.ndarray, lines: list[str]) -> tuple[np.ndarray, int]:
    """The image below a black band carrying `lines` in white (burned in); (RGB, band height)."""
    from PIL import Image, ImageDraw

    rgb = enlarge(to_rgb(image))
    h, w = rgb.shape[:2]
    longest = max(len(t) for t in lines)
    size = max(6, min(int(h / 30), int(1.8 * w / longest)))
    band = int(len(lines) * size * 1.3 + size * 0.6)
    canvas = Image.new("RGB", (w, h + band), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb), (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        draw.text((max(2, size // 3), int(size * 0.3 + i * size * 1.3)), text, fill=(255, 255, 255), font=_font(size))
    return np.asarray(canvas), band


def draw_vertebrae(image: np.ndarray, vertebrae) -> np.ndarray:
    """RGB (enlarged as `enlarge`) with each vertebra's outline (colour by Genant grade) and its level,
    grade and shape beside it: vfa.spine.draw_outlines, the drawer of vfa's PNG overlays too."""
    from PIL import Image

    rgb = to_rgb(image)
    pic = enlarge(rgb)
    return np.asarray(draw_outlines(Image.fromarray(pic), vertebrae, pic.shape[1] / rgb.shape[1]))


def orientation(src) -> tuple[tuple[str, str], bool]:
    """The source's PatientOrientation if it has two values, else a placeholder to be emptied (Type 2)."""
    value = src.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(str(x) for x in value):
        return (str(value[0]), str(value[1])), True
    return ("P", "F"), False


def build_sc(src, rgb: np.ndarray, series_uid: str, series_number: int, instance_number: int,
             series_description: str, derivation: str):
    """An SC image (RGB, burned-in annotation) in the source's study, patient and study copied
    by highdicom's from_ref_dataset, the source image referenced in SourceImageSequence."""
    import highdicom as hd
    from pydicom.dataset import Dataset

    po, known = orientation(src)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=src, pixel_array=np.ascontiguousarray(rgb, dtype=np.uint8), photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=instance_number, manufacturer="vfa (open source)",
        patient_orientation=po)
    if not known:
        sc.PatientOrientation = ""  # Type 2: unknown for this source; nothing is invented
    if "Laterality" not in sc:  # Type 2C (dciodvfy asks for it); a spine has none, so present and empty
        sc.Laterality = src.get("Laterality", "")
    sc.SeriesDescription = series_description[:64]
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = derivation[:1024]
    ref = Dataset()
    for key in _REFERENCE_KEYWORDS:
        setattr(ref, f"Referenced{key}", getattr(src, key))
    sc.SourceImageSequence = [ref]
    sc.ImageComments = f"{RESEARCH_TEXT}. {derivation}"[:10240]
    return sc
