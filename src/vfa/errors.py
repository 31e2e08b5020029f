"""User errors: what the CLI reports as one line (exit code 2) instead of a traceback."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot drive a run (unknown key, missing data path, bad value)."""
