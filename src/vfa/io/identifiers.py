"""What in a DICOM file or its name identifies a person, kept out of every output by default."""
from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")  # also what vfa.io.dicom reads by extension

IDENTIFIER_KEYWORDS = ("PatientID", "PatientName", "PatientBirthDate", "StudyDate", "AccessionNumber",
                       "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def dicom_identifiers(path: str | Path) -> dict:
    """The identifying attributes of one DICOM file (only for --keep-identifiers); {} if none."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception:
        return {}
    return {k: str(ds.get(k)) for k in IDENTIFIER_KEYWORDS if ds.get(k) not in (None, "")}


# a DICOM UID as PACS exports name files with it: digits and dots, at least 5 components
# (1.2.840.x.y...), alone (SOPInstanceUID.dcm) or inside a name (storescp's MODALITY.UID)
_UID = re.compile(r"(?<![0-9])[0-9]+(?:\.[0-9]+){4,}(?![0-9])")


def public_path(rel: str) -> str:
    """`rel` with every DICOM UID in its file or folder names (a file named by its SOPInstanceUID, a
    folder by its StudyInstanceUID) replaced by `uid-` and 16 hex digits of its SHA-256: stable (the
    same file gets the same name in every output) and not identifying."""
    return _UID.sub(lambda m: "uid-" + hashlib.sha256(m.group(0).encode()).hexdigest()[:16], str(rel))
