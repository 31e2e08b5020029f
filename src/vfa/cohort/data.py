"""The cohort's analysis table: predictions joined to outcomes, every problem named with its CSV line
before any fit. Torch-free (pandas only), like all of `vfa.cohort`.

Refused (the run stops, listing the lines): missing columns, duplicate IDs, negative follow-up,
unknown event codes, a covariate that does not vary, an exposure group with no events.
Left out and reported (`Cohort.excluded`, written to exclusions.csv): rows of either file without
a match in the other, rows with a missing follow-up time, event or score, and rows missing any
covariate of --adjust or --base (the reason names the columns). The last are left out up front, so
that every model (unadjusted, adjusted, base, base + finding) is fitted on the same complete cases
and their estimates and C-indices compare like with like.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vfa.errors import ConfigError

SCORES = ("raw", "tta_mean", "tta_max")
EXPOSURES = ("predicted", *SCORES)
LISTED = 10  # lines named in a message


class CohortError(ConfigError):
    """A problem in the cohort's input files (one line, naming the file and CSV lines)."""


def _lines(mask) -> str:
    rows = (np.flatnonzero(np.asarray(mask)) + 2).tolist()  # header is line 1
    more = f" and {len(rows) - LISTED} more" if len(rows) > LISTED else ""
    return ", ".join(map(str, rows[:LISTED])) + more


def read_csv(path: str | Path, what: str) -> pd.DataFrame:
    from vfa.io.tables import read_table

    frame = read_table(path, f"{what} file", CohortError)
    if frame.empty:
        raise CohortError(f"{path}: no rows")
    return frame


def require_columns(frame: pd.DataFrame, columns, path) -> None:
    """CohortError naming every one of `columns` that `frame` (read from `path`) lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CohortError(f"{path}: no column {', '.join(repr(c) for c in missing)} (columns: "
                          f"{', '.join(frame.columns)})")


def _unique(frame: pd.DataFrame, key: str, path) -> None:
    dup = frame[key].duplicated(keep=False) & (frame[key] != "")
    if dup.any():
        raise CohortError(f"{path}: {int(dup.sum())} rows share an ID in '{key}' (CSV lines {_lines(dup)}); one row "
                          "per image or patient")


def numeric_column(frame: pd.DataFrame, column: str, path) -> pd.Series:
    """A text column as numbers (empty cells NaN); CohortError naming the CSV lines that are not."""
    text = frame[column].str.strip()
    values = pd.to_numeric(text, errors="coerce")
    bad = values.isna() & (text != "")
    if bad.any():
        raise CohortError(f"{path}: '{column}' is not a number on CSV lines {_lines(bad)}")
    return values


@dataclass
class Cohort:
    frame: pd.DataFrame            # id, time, exposure (0/1), score, score_sd, one column per outcome, covariates
    outcomes: list[str]            # the event columns, each coded censor/event/competing
    covariates: list[str]
    exposure: str
    threshold: float | None
    codes: dict                    # {"censored": 0, "event": 1, "competing": 2}
    excluded: list[dict] = field(default_factory=list)   # {"file", "line", "id", "reason"}
    reader: str | None = None
    base: list[str] = field(default_factory=list)        # the clinical model's columns (--base)
    missing_covariates: int = 0                          # rows left out for a missing covariate


def follow_up(frame: pd.DataFrame, time: str, start: str | None, end: str | None, path) -> pd.Series:
    """Years from the scan: the `time` column, or (end - start) dates / 365.25."""
    if start or end:
        require_columns(frame, [c for c in (start, end) if c], path)
        if not (start and end):
            raise CohortError("--start-date and --end-date go together (follow-up = end - start)")
        s, e = (pd.to_datetime(frame[c].str.strip(), errors="coerce") for c in (start, end))
        bad = (s.isna() & (frame[start].str.strip() != "")) | (e.isna() & (frame[end].str.strip() != ""))
        if bad.any():
            raise CohortError(f"{path}: unreadable dates in '{start}'/'{end}' on CSV lines {_lines(bad)}")
        return (e - s).dt.days / 365.25
    require_columns(frame, [time], path)
    return numeric_column(frame, time, path)


def _exclude(excluded: list, path, frame: pd.DataFrame, mask, id_col: str, reason: str) -> None:
    for i in np.flatnonzero(np.asarray(mask)):
        excluded.append({"file": str(path), "line": int(frame["_line"].iloc[i]), "id": frame[id_col].iloc[i],
                         "reason": reason})


def _covariates(joined: pd.DataFrame, adjust, path) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Numeric covariates as numbers, text ones (sex) as 0/1 indicators (first level the reference);
    {covariate: its columns}."""
    cols, names = {}, {}
    for c in adjust:
        text = joined[c].str.strip()
        values = pd.to_numeric(text, errors="coerce")
        if (values.isna() & (text != "")).any():  # categorical
            levels = sorted(set(text[text != ""]))
            if len(levels) < 2:
                raise CohortError(f"{path}: covariate '{c}' takes a single value ({levels}); it cannot be adjusted for")
            for level in levels[1:]:
                name = f"{c}={level}"
                cols[name] = np.where(text == "", np.nan, (text == level).astype(float))
                names.setdefault(c, []).append(name)
        else:
            if values.nunique(dropna=True) < 2:
                raise CohortError(f"{path}: covariate '{c}' is constant; it cannot be adjusted for")
            cols[c] = values.to_numpy(float)
            names[c] = [c]
    return pd.DataFrame(cols, index=joined.index), names


def _complete_cases(joined: pd.DataFrame, covariates, excluded: list, id_col: str, path) -> pd.DataFrame:
    """`joined` without the rows missing any of `covariates`, each listed in `excluded` with the
    columns it lacks."""
    if not covariates:
        return joined
    empty = pd.DataFrame({c: joined[c].str.strip().eq("") | joined[c].isna() for c in covariates})
    missing = empty.any(axis=1)
    for i in np.flatnonzero(missing.to_numpy()):
        lacks = [c for c in covariates if empty[c].iloc[i]]
        excluded.append({"file": str(path), "line": int(joined["_line"].iloc[i]), "id": joined[id_col].iloc[i],
                         "reason": f"missing covariate {', '.join(lacks)} (left out of every model)"})
    return joined[~missing].reset_index(drop=True)


def _check_events(frame: pd.DataFrame, outcomes, codes: dict, path) -> None:
    for col in outcomes:
        for group in (0, 1):
            part = frame.loc[frame["exposure"] == group, col]
            if (part == codes["event"]).sum() == 0:
                what = "exposed (model finding positive)" if group else "unexposed (model finding negative)"
                raise CohortError(f"{path}: outcome '{col}': the {what} group has {len(part)} subjects and no event; "
                                  "its hazard ratio is undefined")


def load_cohort(predictions, outcomes, id_col: str = "image_id", exposure: str = "predicted",
                threshold: float | None = None, time: str = "time", events=("event",), codes=(0, 1, 2), adjust=(),
                start: str | None = None, end: str | None = None, reader: str | None = None, base=()) -> Cohort:
    """The analysis table of `predictions` (vfa predict/evaluate) joined to `outcomes` on `id_col`;
    `adjust`: the adjusted models' covariates, `base`: the clinical model's (added value)."""
    wanted = list(dict.fromkeys([*adjust, *base]))
    pred, out = read_csv(predictions, "predictions"), read_csv(outcomes, "outcomes")
    if exposure not in EXPOSURES:
        raise CohortError(f"--exposure must be one of {', '.join(EXPOSURES)}, got {exposure!r}")
    score = "raw" if exposure == "predicted" else exposure
    require_columns(pred, [id_col, score, *(["predicted"] if exposure == "predicted" and threshold is None else [])],
                    predictions)
    require_columns(out, [id_col, *events, *wanted], outcomes)
    if reader and reader not in out.columns and reader not in pred.columns:
        raise CohortError(f"no reader column '{reader}' in {outcomes} or {predictions}")
    for frame, path in ((pred, predictions), (out, outcomes)):
        frame["_line"] = range(2, len(frame) + 2)
        frame[id_col] = frame[id_col].str.strip()
        _unique(frame, id_col, path)
    pred["score"] = numeric_column(pred, score, predictions)
    out["time"] = follow_up(out, time, start, end, outcomes)
    if (out["time"] < 0).any():
        raise CohortError(f"{outcomes}: negative follow-up time on CSV lines {_lines(out['time'] < 0)}")
    code = dict(zip(("censored", "event", "competing"), codes))
    for col in events:
        values = numeric_column(out, col, outcomes)
        unknown = values.notna() & ~values.isin(list(code.values()))
        if unknown.any():
            raise CohortError(f"{outcomes}: '{col}' has codes other than {sorted(code.values())} on CSV lines "
                              f"{_lines(unknown)} (--event-codes)")
        out[col] = values
    excluded: list[dict] = []
    _exclude(excluded, outcomes, out, ~out[id_col].isin(pred[id_col]), id_col, "no matching row in the predictions")
    _exclude(excluded, predictions, pred, ~pred[id_col].isin(out[id_col]), id_col, "no matching row in the outcomes")
    joined = pred.drop(columns=[c for c in pred.columns if c in out.columns and c not in (id_col,)]) \
        .merge(out, on=id_col, how="inner", suffixes=("_pred", ""))
    missing = joined["time"].isna() | joined[list(events)].isna().any(axis=1) | joined["score"].isna()
    _exclude(excluded, outcomes, joined, missing, id_col, "missing follow-up time, event or score")
    joined = joined[~missing].reset_index(drop=True)
    before = len(excluded)
    joined = _complete_cases(joined, wanted, excluded, id_col, outcomes)
    if joined.empty:
        raise CohortError(f"no row of {outcomes} matches a row of {predictions} on '{id_col}' with complete data")
    if exposure == "predicted" and threshold is None:
        joined["exposure"] = numeric_column(joined, "predicted", predictions).astype(int)
    else:
        threshold = 0.5 if threshold is None else float(threshold)
        joined["exposure"] = (joined["score"] >= threshold).astype(int)
    joined["score_sd"] = (joined["score"] - joined["score"].mean()) / joined["score"].std(ddof=1)
    covs, names = _covariates(joined, wanted, outcomes)
    frame = pd.concat([joined[[id_col, "_line", "time", "exposure", "score", "score_sd", *events]]
                       .rename(columns={id_col: "id"}), covs], axis=1)
    adjust_cols, base_cols = ([n for c in cols for n in names[c]] for cols in (adjust, base))
    if reader:
        frame["reader"] = joined[reader].str.strip()
    _check_events(frame, events, code, outcomes)
    return Cohort(frame, list(events), adjust_cols, exposure, threshold, code, excluded, reader, base_cols,
                  len(excluded) - before)
