"""DICOM reading (pydicom + pylibjpeg decoders) to a float32 gray image in [0, 1], and a small writer.

What `read_dicom` applies, in the order of the DICOM grayscale pipeline (PS3.4 N.2):

1. decoding by pydicom: byte order, PixelRepresentation (signedness), PlanarConfiguration and
   YBR -> RGB are pydicom's; compressed transfer syntaxes go through pylibjpeg's plugins (JPEG
   baseline/extended/lossless and JPEG-LS: pylibjpeg-libjpeg; JPEG 2000: pylibjpeg-openjpeg;
   RLE: pylibjpeg-rle or pydicom itself);
2. the Modality LUT (RescaleSlope/Intercept or a Modality LUT Sequence);
3. the first VOI LUT (a VOI LUT Sequence, else WindowCenter/WindowWidth with VOILUTFunction),
   mapped to [0, 1]; without one the stored value range (BitsStored, PixelRepresentation, through
   the Modality LUT) is mapped to [0, 1], the analogue of the notebook's 8-bit / 255;
4. MONOCHROME1 inverted, so bone is bright as in MONOCHROME2;
5. RGB / YBR / PALETTE COLOR converted to gray by ITU-R BT.601 luma.

A multi-frame file is refused unless a frame is chosen (`frame=K`, 0-based; single-frame files
ignore it). No identifier (PatientName, PatientID, dates, UIDs) goes into a message or into the
returned metadata; `dicom_identifiers` reads them only when a user asks (--keep-identifiers).
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

from vfa.io.errors import MAX_PIXELS, BadImageError
from vfa.io.identifiers import DICOM_EXTENSIONS, IDENTIFIER_KEYWORDS, dicom_identifiers, public_path  # noqa: F401


# What would decode a transfer syntax that no installed plugin handles (named in the error).
_PACKAGES = {
    "JPEG": "pylibjpeg and pylibjpeg-libjpeg (or python-gdcm)",
    "JPEG-LS": "pylibjpeg and pylibjpeg-libjpeg (or pyjpegls, or python-gdcm)",
    "JPEG 2000": "pylibjpeg and pylibjpeg-openjpeg (or python-gdcm)",
    "High-Throughput JPEG 2000": "pylibjpeg and pylibjpeg-openjpeg",
    "RLE": "pylibjpeg-rle",
}


class DicomError(ValueError):
    """Raised inside this module; `read_dicom` turns it into BadImageError(path, reason)."""


def has_dicom_magic(path: str | Path) -> bool:
    """True when the file carries the DICOM Part 10 preamble: b'DICM' at byte 128."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _package_for(uid) -> str:
    name = uid.name
    if "High-Throughput" in name:
        return _PACKAGES["High-Throughput JPEG 2000"]
    if "JPEG 2000" in name:
        return _PACKAGES["JPEG 2000"]
    if "JPEG-LS" in name:
        return _PACKAGES["JPEG-LS"]
    if "JPEG" in name:
        return _PACKAGES["JPEG"]
    if "RLE" in name:
        return _PACKAGES["RLE"]
    return "python-gdcm"


def decoder_status(uid) -> str | None:
    """None when pixel data in this transfer syntax can be decoded here, else the reason."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(uid))
    label = f"{uid.name} ({uid})" if uid.is_valid and uid.name != str(uid) else str(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        if uid.is_private or not uid.is_transfer_syntax:
            return (f"unsupported transfer syntax {label}: private or unknown, no decoder exists in "
                    f"pydicom; convert the file to an uncompressed syntax (e.g. gdcmconv --raw from python-gdcm)")
        return (f"unsupported transfer syntax {label}: video/other encodings are not decoded by pydicom; "
                f"convert the file to an uncompressed syntax (e.g. gdcmconv --raw from python-gdcm)")
    if not decoder.is_available:
        return f"unsupported transfer syntax {label}: no decoder installed; pip install {_package_for(uid)}"
    return None


def _transfer_syntax(ds):
    """The file's transfer syntax; for files without file meta, the encoding pydicom detected."""
    from pydicom import uid

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts:
        return uid.UID(str(ts))
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return None
    syntax = (uid.ImplicitVRLittleEndian if implicit else
              uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)
    ds.file_meta = getattr(ds, "file_meta", None) or __import__("pydicom").dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return syntax


def _no_pixels_reason(ds, caught) -> str:
    from pydicom.uid import UID

    truncated = any("end of file" in str(w.message).lower() for w in caught)
    sop = ds.get("SOPClassUID")
    kind = f"SOP class {UID(str(sop)).name}" if sop else "no SOP class"
    modality = ds.get("Modality")
    what = f"{kind}" + (f", modality {modality}" if modality else "")
    if truncated or len(ds) == 0:
        return f"truncated or corrupt DICOM file: no pixel data could be read ({what})"
    if "Rows" in ds or (sop and "Image" in UID(str(sop)).name):
        return f"DICOM without pixel data ({what}): the file may be truncated"
    return f"DICOM without pixel data ({what}): not an image"


def _value_range(ds) -> tuple[float, float]:
    """The stored value range mapped through the Modality LUT (as pydicom's windowing assumes)."""
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2 ** bits - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2 ** bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


def _luma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def gray_from_pixels(arr: np.ndarray, ds) -> tuple[np.ndarray, str]:
    """pydicom's decoded pixels -> float64 gray in [0, 1] (steps 2-5 above), and the VOI applied."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else float(rgb.max() or 1)
        return np.clip(_luma(rgb) / top, 0, 1), "palette"
    if arr.ndim == 3:  # RGB (pydicom has converted YBR_* to RGB and handled PlanarConfiguration)
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        return np.clip(_luma(arr) / top, 0, 1), "none"
    x = apply_modality_lut(arr, ds).astype(np.float64)
    lo, hi = _value_range(ds)
    voi = "none"
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = apply_voi(x, ds, index=0).astype(np.float64) / float(2 ** bits - 1)
        voi = "VOI LUT"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            out = (apply_windowing(x, ds, index=0) - lo) / (hi - lo)
            voi = f"window ({str(ds.get('VOILUTFunction', 'LINEAR')).upper()})"
        except (ValueError, TypeError, IndexError):  # invalid window: use the stored range
            out, voi = (x - lo) / (hi - lo), "none (invalid window ignored)"
    else:
        out = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    out = np.clip(out, 0, 1)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out, voi


def read_dicom(path: str | Path, frame: int | None = None, max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    """(H, W) float32 in [0, 1] and metadata (no identifiers). Raises BadImageError with the reason."""
    max_pixels = max_pixels or MAX_PIXELS
    try:
        arr, info = _read(Path(path), frame, max_pixels)
    except DicomError as exc:
        raise BadImageError(path, str(exc)) from None
    return arr, info


def _read(path: Path, frame: int | None, max_pixels: int):
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import pixel_array

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _check_deflated_size(path, max_pixels)  # before pydicom inflates the whole file into memory
        try:
            # force: files without the 128-byte preamble; defer: pixel data stays on disk until
            # the image size has been checked (a decompression bomb is refused before decoding)
            ds = pydicom.dcmread(path, force=True, defer_size=1 << 20)
        except InvalidDicomError as exc:
            raise DicomError(f"not a readable DICOM file ({exc})") from None
        except Exception as exc:  # truncated or garbage bytes: pydicom raises many types
            raise DicomError(f"not a readable DICOM file ({type(exc).__name__}: {_safe(exc)})") from None
        if "PixelData" not in ds:
            if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
                raise DicomError("DICOM float pixel data (parametric map) is not a VFA image")
            if not has_dicom_magic(path) and not any(int(t) >> 16 in (0x0008, 0x0010, 0x0020, 0x0028)
                                                     for t in ds.keys()):
                raise DicomError("not a DICOM file (no DICM header and no DICOM attributes)")
            raise DicomError(_no_pixels_reason(ds, caught))
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            frames = int(ds.get("NumberOfFrames") or 1)
            samples = int(ds.get("SamplesPerPixel") or 1)
            bits_stored = int(ds.get("BitsStored") or ds.BitsAllocated)
        except (AttributeError, TypeError, ValueError) as exc:
            missing = [k for k in ("Rows", "Columns", "BitsAllocated") if k not in ds]
            what = f"missing {', '.join(missing)}" if missing else _safe(exc)
            raise DicomError(f"DICOM image attributes missing or invalid ({what})") from None
        if rows == 0 or cols == 0:
            raise DicomError("zero-size image (Rows or Columns is 0)")
        if rows * cols * frames > max_pixels:
            raise DicomError(f"image too large ({cols}x{rows} pixels x {frames} frame(s) > {max_pixels})")
        index = None
        if frames > 1:
            if frame is None:
                raise DicomError(f"multi-frame DICOM ({frames} frames): vfa reads one image per file; "
                                 f"choose one with --frame K (0-based; --set data.frame=K for training)")
            if not 0 <= frame < frames:
                raise DicomError(f"frame {frame} requested but the file has {frames} frames (0..{frames - 1})")
            index = frame
        ts = _transfer_syntax(ds)
        if ts is None:
            raise DicomError("DICOM file without a transfer syntax")
        if not ts.is_transfer_syntax or ts.is_private:
            raise DicomError(decoder_status(ts) or f"unsupported transfer syntax {ts}")
        if ts.is_compressed or ts.is_deflated:
            reason = decoder_status(ts)
            if reason:
                raise DicomError(reason)
        try:
            arr = pixel_array(ds, index=index)
            gray, voi = gray_from_pixels(arr, ds)
        except MemoryError:
            raise DicomError("image too large to decode in memory") from None
        except Exception as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            detail = "; ".join(lines)[:400] or type(exc).__name__
            hint = ("; python-gdcm may decode it" if ts.is_compressed and "gdcm" not in detail.lower() else "")
            raise DicomError(f"cannot decode DICOM pixel data ({ts.name}; {type(exc).__name__}: "
                             f"{detail}){hint}") from None
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    info = {"format": "DICOM", "modality": str(ds.get("Modality") or "-"),
            "photometric": str(ds.get("PhotometricInterpretation") or "-"),
            "transfer_syntax": ts.name, "bits": bits_stored, "frames": frames, "samples": samples,
            "pixel_spacing": [float(v) for v in spacing][:2] if spacing else None, "voi": voi,
            "patient_key": _patient_key(ds)}
    if gray.shape != (rows, cols):
        raise DicomError(f"decoded shape {gray.shape} does not match Rows x Columns {rows}x{cols}")
    return gray.astype(np.float32), info


def _safe(exc: Exception) -> str:
    """The first line of an exception message, shortened (pydicom's decoding errors name no values)."""
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return msg if len(msg) <= 200 else msg[:197] + "..."


def _patient_key(ds) -> str | None:
    """A one-way key of PatientID (and IssuerOfPatientID) for leakage checks; never printed."""
    pid = str(ds.get("PatientID") or "").strip()
    if not pid:
        return None
    return hashlib.blake2b(f"{ds.get('IssuerOfPatientID') or ''}|{pid}".encode(), digest_size=12).hexdigest()


def write_dicom(path: str | Path, array: np.ndarray, monochrome1: bool = False, bits: int | None = None,
                patient_id: str = "PHANTOM-00000", pixel_spacing: tuple[float, float] | None = (0.3, 0.3),
                description: str = "vfa synthetic phantom") -> Path:
    """Write a 2-D uint8/uint16 array as an uncompressed Secondary Capture DICOM file.

    The identifiers are obviously fake (PatientName PHANTOM^SYNTHETIC, birth date 1900-01-01,
    ConversionType SYN) and the UIDs are derived from the file name and patient_id, so a phantom
    written twice is byte-identical. `monochrome1=True` stores the inverted values with
    MONOCHROME1, so a reader that honours it recovers `array`. `bits` (8 or 16) defaults to the
    array's dtype.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"write_dicom needs a 2-D array, got shape {arr.shape}")
    bits = bits or (8 if arr.dtype == np.uint8 else 16)
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if arr.dtype.kind == "f":
        arr = np.round(np.clip(arr, 0, 1) * (2 ** bits - 1))
    dtype = np.uint8 if bits == 8 else np.uint16
    if arr.min() < 0 or arr.max() > 2 ** bits - 1:
        raise ValueError(f"values outside 0..{2 ** bits - 1}")
    arr = arr.astype(dtype)
    if monochrome1:
        arr = (2 ** bits - 1 - arr.astype(np.int64)).astype(dtype)
    path = Path(path)
    seed = [path.name, patient_id]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=seed + ["sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient_id, "series"])
    ds.PatientName = "PHANTOM^SYNTHETIC"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19000101"
    ds.PatientSex = "O"
    ds.StudyDate = ds.ContentDate = "19000101"
    ds.StudyTime = ds.ContentTime = "000000"
    ds.StudyID = "PHANTOM"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Modality = "OT"
    ds.ConversionType = "SYN"  # synthetic image
    ds.Manufacturer = "vfa"
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.ImageComments = f"{description}: not a patient"
    ds.BodyPartExamined = "SPINE"
    ds.set_pixel_data(arr, "MONOCHROME1" if monochrome1 else "MONOCHROME2", bits, generate_instance_uid=False)
    if pixel_spacing:
        ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


DEFLATED = "1.2.840.10008.1.2.1.99"
HEADER_BYTES = 1 << 20  # inflated bytes enough for any header before the pixel data


def _check_deflated_size(path: Path, max_pixels: int) -> None:
    """A deflated file is inflated whole by pydicom when it is opened, so a small file declaring
    30000x30000 would take gigabytes before its size could be checked: inflate only the first MB,
    read Rows, Columns and frames from it, and refuse a declared size over the limit."""
    import zlib
    from io import BytesIO

    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

    try:
        with open(path, "rb") as f:
            read_preamble(f, force=True)
            meta = _read_file_meta_info(f)
            if str(meta.get("TransferSyntaxUID", "")) != DEFLATED:
                return
            head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(f.read(HEADER_BYTES), HEADER_BYTES)
        ds = read_dataset(BytesIO(head), is_implicit_VR=False, is_little_endian=True,
                          stop_when=lambda tag, vr, length: tag == 0x7FE00010)
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames = int(ds.get("NumberOfFrames") or 1)
    except Exception:  # not readable this way: the full read below reports the file as it is
        return
    if rows * cols * frames > max_pixels:
        raise DicomError(f"image too large ({cols}x{rows} pixels x {frames} frame(s) > {max_pixels}; "
                         "refused before inflating the deflated file)")
