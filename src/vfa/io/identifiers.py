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


# a DICOM UID as PACS exports name files by: digits and dots, at least 5 components (1.2.840.x.y...)
_UID = re.compile(r"^[0-9]+(\.[0-9]+){4,}$")


def public_path(rel: str) -> str:
    """`rel` with every path component that is a DICOM UID (a file named by its SOPInstanceUID, a
    folder by its StudyInstanceUID; with or without .dcm) replaced by `uid-` and 16 hex digits of
    its SHA-256: stable (the same file gets the same name in every output) and not identifying."""
    parts = []
    for part in str(rel).split("/"):
        stem, dot, ext = part.rpartition(".") if part.lower().endswith(DICOM_EXTENSIONS) else (part, "", "")
        if _UID.match(stem):
            part = "uid-" + hashlib.sha256(stem.encode()).hexdigest()[:16] + dot + ext
        parts.append(part)
    return "/".join(parts)
