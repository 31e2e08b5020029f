"""Image reading shared by training, evaluation, prediction and heatmaps."""
from vfa.io.images import BadImageError, IMAGE_EXTENSIONS, read_image

__all__ = ["BadImageError", "IMAGE_EXTENSIONS", "read_image"]
