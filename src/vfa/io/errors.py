"""The error every reader raises for an unusable input file, and the size limit they share."""
from __future__ import annotations

# 100 Mpixel: far above any VFA scan; refuse instead of exhausting memory.
MAX_PIXELS = 100_000_000
# an image whose shorter side is below this cannot hold a readable spine (data.min_side)
MIN_SIDE = 16


class BadImageError(ValueError):
    """An input file that cannot be used, with the reason."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")
