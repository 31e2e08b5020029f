"""Decode one image file to a float32 grayscale array in [0, 1]: the single entry point.

`read_image(path)` serves training, evaluation, prediction and heatmaps alike. It dispatches on
the file: a `.dcm`/`.dicom`/`.dic` extension or the DICOM magic (b'DICM' at byte 128, for the
extension-less files PACS exports) goes to `vfa.io.dicom`; anything else to Pillow (PNG, JPEG,
TIFF, BMP). 8-bit images are divided by 255 (the notebook's rescale); 16-bit images are scaled by
65535, not clipped as Pillow's RGB conversion would. `normalize` then applies the configured
intensity normalization (`vfa.io.normalize`). Every failure is a `BadImageError` naming the file.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from vfa.io.dicom import DICOM_EXTENSIONS, has_dicom_magic, read_dicom
from vfa.io.errors import MAX_PIXELS, MIN_SIDE, BadImageError  # noqa: F401  (MAX_PIXELS: read here, patchable)
from vfa.io.normalize import normalize as apply_normalize

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _to_unit_gray(img: Image.Image, path) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.float32) / 65535.0
    if mode == "I":  # 32-bit int PNGs carry 16-bit data in practice
        arr = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if arr.max() > 255 else 255.0
        return np.clip(arr / scale, 0, 1).astype(np.float32)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA").convert("RGB")  # drop alpha: VFA images carry no transparency meaning
    if mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32) / 255.0


def is_dicom(path: str | Path) -> bool:
    return Path(path).suffix.lower() in DICOM_EXTENSIONS or has_dicom_magic(path)


def is_image_file(path: str | Path) -> bool:
    """A file vfa reads: an image extension, a DICOM extension, or (any other name) the DICOM magic."""
    suffix = Path(path).suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix in DICOM_EXTENSIONS or has_dicom_magic(path)


def read_image(path: str | Path, frame: int | None = None, normalize: str | None = None) -> np.ndarray:
    """(H, W) float32 in [0, 1]. Raises BadImageError with the reason for anything unusable.

    `frame` picks one frame of a multi-frame DICOM file (0-based; refused without it);
    `normalize` is a `data.normalize` value (default: none beyond the format's own scaling)."""
    arr, _ = read_image_info(path, frame)
    if normalize not in (None, "seed"):
        arr = apply_normalize(arr, normalize)
    return arr


def read_image_info(path: str | Path, frame: int | None = None) -> tuple[np.ndarray, dict]:
    """`read_image` without normalization, plus metadata: format, bits, mode or DICOM modality,
    photometric interpretation, transfer syntax, frames, pixel spacing (no identifiers)."""
    path = Path(path)
    if not path.is_file():
        raise BadImageError(path, "file not found")
    if path.stat().st_size == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    if is_dicom(path):
        return read_dicom(path, frame, MAX_PIXELS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w == 0 or h == 0:
                    raise BadImageError(path, "zero-size image")
                if w * h > MAX_PIXELS:
                    raise BadImageError(path, f"image too large ({w}x{h} pixels > {MAX_PIXELS})")
                frames = int(getattr(img, "n_frames", 1) or 1)
                if frames > 1:  # multi-page TIFF, animated PNG/GIF: as for DICOM, never silently frame 0
                    if frame is None:
                        raise BadImageError(path, f"multi-frame image ({frames} frames): choose one with "
                                                  f"--frame K (0-based; --set data.frame=K for training)")
                    if not 0 <= frame < frames:
                        raise BadImageError(path, f"frame {frame} requested but the file has {frames} frames")
                    img.seek(frame)
                img.load()
                info = {"format": img.format or "-", "mode": img.mode, "bits": _bits(img), "frames": frames}
                arr = _to_unit_gray(img, path)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(path, f"decompression bomb refused ({exc})") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise BadImageError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from None
    return arr, info


def _bits(img: Image.Image) -> int:
    if img.mode.startswith("I;16"):
        return 16
    if img.mode in ("I", "F"):
        return 32
    return 1 if img.mode == "1" else 8


def pixel_hash(arr: np.ndarray) -> str:
    """Content hash of decoded pixels (shape included): the same image in two files, whatever the
    format or file name, has the same hash."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
    return h.hexdigest()


def inspect_file(path: str | Path, frame: int | None = None, min_side: int = MIN_SIDE) -> dict:
    """Decode one file for a dataset check: {'path', 'reason'} if unusable (too small included:
    a side under `min_side` px), else its metadata, 'shape' (H, W) and 'hash'. Picklable in and
    out (run in worker processes)."""
    try:
        arr, info = read_image_info(path, frame)
    except BadImageError as exc:
        return {"path": str(path), "reason": exc.reason}
    if min(arr.shape) < min_side:
        return {"path": str(path), "reason": f"image too small ({arr.shape[0]}x{arr.shape[1]} px; a side under "
                                             f"{min_side} px cannot hold a spine; data.min_side sets the limit)"}
    return {"path": str(path), "reason": None, "shape": tuple(int(v) for v in arr.shape),
            "hash": pixel_hash(arr), **info}


def probe_image(path: str | Path) -> tuple[int, int]:
    """Cheap header check (size) used to validate a dataset before a run; decodes nothing."""
    path = Path(path)
    if path.is_file() and path.stat().st_size and is_dicom(path):
        return read_image_info(path, 0)[0].shape  # DICOM: decoded (pydicom has no cheap verify)
    try:
        if path.stat().st_size == 0:
            raise BadImageError(path, "empty file (0 bytes)")
        with Image.open(path) as img:
            w, h = img.size
            img.verify()  # checks chunk CRCs for PNG without decoding pixels
    except BadImageError:
        raise
    except Exception as exc:
        raise BadImageError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from None
    if w == 0 or h == 0:
        raise BadImageError(path, "zero-size image")
    if w * h > MAX_PIXELS:
        raise BadImageError(path, f"image too large ({w}x{h} pixels > {MAX_PIXELS})")
    return h, w
