"""Image reading shared by training, evaluation, prediction and heatmaps: `read_image` is the one entry point."""
from vfa.io.dicom import DICOM_EXTENSIONS, write_dicom
from vfa.io.errors import MAX_PIXELS, BadImageError
from vfa.io.images import (IMAGE_EXTENSIONS, inspect_file, is_dicom, is_image_file, pixel_hash, read_image,
                           read_image_info)
from vfa.io.normalize import NormalizeError, normalize

__all__ = ["BadImageError", "DICOM_EXTENSIONS", "IMAGE_EXTENSIONS", "MAX_PIXELS", "NormalizeError", "inspect_file",
           "is_dicom", "is_image_file", "normalize", "pixel_hash", "read_image", "read_image_info", "write_dicom"]
