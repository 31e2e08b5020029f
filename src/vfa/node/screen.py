"""Which received instances the node reads: lateral-spine VFA images only.

A PACS sends whole studies, so a DXA study brings hip and forearm images, dose reports and
sometimes vfa's own earlier results. Those are recorded with the reason and skipped, never guessed
on: by SOP class (the image classes VFA arrives in), body part (when the header names one), image
size (the smaller side, and the pixel count vfa.io refuses above), and transfer syntax (one that
this installation can decode)."""
from __future__ import annotations

from pydicom.uid import UID, DeflatedExplicitVRLittleEndian as DEFLATED

from vfa.io.dicom_out import SERIES_DESCRIPTION

# Hologic and GE export VFA as Secondary Capture; DX and CR where the scanner writes them; the
# multi-frame SC forms are what vfa.io.dicom reads frame by frame.
VFA_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte SC",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word SC",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color SC",
    "1.2.840.10008.5.1.4.1.1.1": "CR Image",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX Image - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX Image - For Processing",
}
# vfa's own results (vfa.io.dicom_sc / dicom_sr write these): a PACS that routes every new object to
# the node sends them back, and reading them would start a loop
VFA_MANUFACTURER = "vfa (open source)"
# BodyPartExamined values (DICOM PS3.16 CID 4031 and what DXA scanners write) that a VFA image can carry
SPINE_PARTS = {"", "SPINE", "LSPINE", "TSPINE", "TLSPINE", "THORACOLUMBAR", "WHOLEBODY", "CHEST_TO_PELVIS",
               "CHEST", "ABDOMEN", "BONE"}


def skip_reason(ds, min_side: int, max_pixels: int | None = None) -> str | None:
    """Why the instance `ds` (its header; file meta included) is not read, or None to read it."""
    from vfa.io import MAX_PIXELS
    from vfa.io.dicom import decoder_status

    sop_class, maker = str(ds.get("SOPClassUID", "")), str(ds.get("Manufacturer", ""))
    if sop_class not in VFA_CLASSES:
        return f"SOP class {UID(sop_class).name or sop_class or 'missing'} is not an image class VFA arrives in"
    if maker == VFA_MANUFACTURER or str(ds.get("SeriesDescription", "")) == SERIES_DESCRIPTION:
        return "a vfa result (the node's own SC or another vfa run's), not a source image"
    missing = [k for k in ("StudyInstanceUID", "SOPInstanceUID") if not ds.get(k)]
    if missing:
        return f"no {' or '.join(missing)}"
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper().replace(" ", "")
    if part not in SPINE_PARTS:
        return f"body part {part} is not the spine"
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    frames = int(ds.get("NumberOfFrames") or 1)
    if min(rows, cols) < min_side:
        return f"image too small ({rows}x{cols} px; a lateral spine image has sides of at least {min_side} px)"
    if rows * cols * frames > (max_pixels or MAX_PIXELS):
        return f"image too large ({rows}x{cols} px x {frames} frame(s))"
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None:
        status = decoder_status(UID(str(syntax)))
        if status:
            return status
    return None


def decodable_syntaxes() -> list[str]:
    """The transfer syntaxes offered for the VFA classes: pynetdicom's list, less what no installed
    decoder reads (a compressed study the node could not decode is better left compressed at the PACS)."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES

    from vfa.io.dicom import decoder_status

    # not Deflated: inflating a dataset whole to read its header is what a decompression bomb exploits
    # (vfa.io.dicom checks a deflated file's size before inflating; a sender always offers another syntax)
    return [ts for ts in ALL_TRANSFER_SYNTAXES if decoder_status(UID(ts)) is None and ts != DEFLATED]
