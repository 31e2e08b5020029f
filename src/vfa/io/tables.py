"""CSV tables read strictly as text (manifests, predictions, outcomes): every cell a string, empty
cells empty (not NaN), header names stripped; a missing or unreadable file is one error naming it."""
from __future__ import annotations

from pathlib import Path


def read_table(path: str | Path, what: str, error: type[Exception] = ValueError):
    """The CSV at `path` as a DataFrame of strings; `what` names it in messages ("manifest"), `error`
    is the exception raised (the caller's user-error type)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as exc:
        raise error(f"{path}: not a readable CSV {what} ({type(exc).__name__}: {exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame
