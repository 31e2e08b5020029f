"""Decode one image file to a float32 grayscale array in [0, 1].

8-bit images are divided by 255 (the notebook's rescale); 16-bit images are scaled by 65535, not
clipped as Pillow's RGB conversion would. Every failure is a `BadImageError` naming the file.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# 100 Mpixel: far above any VFA scan; refuse instead of exhausting memory.
MAX_PIXELS = 100_000_000


class BadImageError(ValueError):
    """An input file that cannot be used, with the reason."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


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


def read_image(path: str | Path) -> np.ndarray:
    """(H, W) float32 in [0, 1]. Raises BadImageError with the reason for anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise BadImageError(path, "file not found")
    if path.stat().st_size == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w == 0 or h == 0:
                    raise BadImageError(path, "zero-size image")
                if w * h > MAX_PIXELS:
                    raise BadImageError(path, f"image too large ({w}x{h} pixels > {MAX_PIXELS})")
                img.load()
                arr = _to_unit_gray(img, path)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(path, f"decompression bomb refused ({exc})") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise BadImageError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from None
    return arr


def probe_image(path: str | Path) -> tuple[int, int]:
    """Cheap header check (size) used to validate a dataset before a run; decodes nothing."""
    path = Path(path)
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
