"""`vfa split`: patient-level, stratified, deterministic train/val/test splits (and folds) of a manifest.

Every image of a patient goes to the same split (or fold), so no patient is ever in two. A
patient's stratum is their label (patients whose images carry different labels form a 'mixed'
stratum of their own). Within each stratum, patients are shuffled with `seed` and then placed, largest first,
into the split whose image count is furthest below its target share: the same manifest, ratios
and seed always give the same split, and the image shares come close to the ratios even when
patients have different numbers of images.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from vfa.data.samples import MANIFEST_PATH_COLUMNS, DataError, Samples
from vfa.runs import refuse_existing

SPLIT_NAMES = ("train", "val", "test")


def _assign(groups: pd.DataFrame, shares: list[float], rng: np.random.Generator) -> dict:
    """groups: index = patient, columns 'size', 'stratum'. Returns patient -> bin index."""
    out = {}
    for _, g in groups.groupby("stratum", sort=True):
        order = g.iloc[rng.permutation(len(g))]
        order = order.iloc[np.argsort(-order["size"].to_numpy(), kind="stable")]
        total = float(order["size"].sum())
        target = np.asarray(shares) * total
        have = np.zeros(len(shares))
        for patient, size in zip(order.index, order["size"]):
            # the bin furthest below its target (relative), ties to the earlier bin
            gap = np.where(target > 0, (target - have) / np.maximum(target, 1e-12), -np.inf)
            k = int(np.argmax(gap))
            out[patient] = k
            have[k] += size
    return out


def assign_folds(groups, labels, folds: int, seed: int = 0) -> np.ndarray:
    """A fold 0..K-1 per row: scikit-learn's StratifiedGroupKFold (shuffled with `seed`), so every
    row of a group (patient) is in one fold and each fold's label mix is close to the whole's."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups, labels = np.asarray(groups).astype(str), np.asarray(labels).astype(str)
    n_groups = len(set(groups))
    if n_groups < folds:
        raise DataError(f"{folds} folds need at least {folds} patients; there are {n_groups}")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = np.full(len(groups), -1)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(groups)), labels, groups)):
        out[held] = k
    return out


def folds_of(samples: Samples, folds: int, seed: int = 0) -> list[int | None]:
    """Each row's fold (None for `test` rows): the manifest's fold column when it has one, else
    `assign_folds` over patients (the patient_id column; without one, each image is its own patient)."""
    split = samples.columns.get("split", [""] * len(samples.paths))
    rows = [i for i, s in enumerate(split) if s != "test"]
    given = samples.columns.get("fold")
    out: list[int | None] = [None] * len(samples.paths)
    if given is not None:
        for i in rows:
            value = given[i]
            if not value.lstrip("-").isdigit() or not 0 <= int(value) < folds:
                line = samples.columns["_line"][i]
                raise DataError(f"{samples.source} line {line}: fold {value!r} is not one of 0..{folds - 1} "
                                f"(data.folds = {folds}; test rows may leave it empty)")
            out[i] = int(value)
        return out
    patients = samples.columns.get("patient_id") or samples.paths
    assigned = assign_folds([patients[i] for i in rows], [samples.labels[i] for i in rows], folds, seed)
    for i, k in zip(rows, assigned):
        out[i] = int(k)
    return out


def fold_samples(samples: Samples, fold: int, folds: int, seed: int = 0) -> tuple[Samples, Samples]:
    """(train, val) of cross-validation fold `fold`: val its rows, train the other folds' rows;
    `test` rows are in neither."""
    which = folds_of(samples, folds, seed)
    train = samples.subset([i for i, k in enumerate(which) if k is not None and k != fold], skipped=[])
    val = samples.subset([i for i, k in enumerate(which) if k == fold], skipped=[])
    train.skipped = list(samples.skipped)  # a manifest's bad rows are reported once, with training's
    train.source, val.source = f"{samples.source} folds != {fold}", f"{samples.source} fold {fold}"
    for part, name in ((train, "training"), (val, "validation")):
        if not part.paths:
            raise DataError(f"{samples.source}: fold {fold} leaves no {name} images")
    return train, val


def split_manifest(frame: pd.DataFrame, by: str = "patient_id", stratify: str | None = "label",
                   ratios=(0.7, 0.15, 0.15), folds: int | None = None, seed: int = 0) -> pd.DataFrame:
    """A copy of `frame` with a `split` column (train/val/test by `ratios`) and, with `folds=K`,
    a `fold` column 0..K-1 over the non-test rows (test share = the last ratio when 2-3 are given)."""
    ratios = [float(r) for r in ratios]
    if not 1 <= len(ratios) <= 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6:
        raise DataError(f"--ratios must be 1 to 3 non-negative shares summing to 1 (train,val,test), got {ratios}")
    if folds is not None and folds < 2:
        raise DataError(f"--folds must be >= 2, got {folds}")
    for col in (by, stratify):
        if col and col not in frame.columns:
            raise DataError(f"no column '{col}' in the manifest (columns: {', '.join(frame.columns)})")
    out = frame.copy()
    patients = out[by].astype(str).str.strip()
    if (patients == "").any():
        rows = (np.flatnonzero(patients == "") + 2)[:10].tolist()
        raise DataError(f"empty '{by}' on CSV line(s) {rows}: every image needs a patient to split by")
    strata = out[stratify].astype(str).str.strip() if stratify else pd.Series("all", index=out.index)
    # a patient's stratum: their label, or 'mixed:a|b' when their images carry different labels
    groups = pd.DataFrame({"patient": patients, "stratum": strata}).groupby("patient", sort=True).agg(
        size=("stratum", "size"), stratum=("stratum", lambda v: v.iloc[0] if v.nunique() == 1
                                           else "mixed:" + "|".join(sorted(set(v)))))
    rng = np.random.default_rng(seed)
    if folds:
        test_share = ratios[-1] if len(ratios) >= 2 else 0.0
        if test_share > 0:
            first = _assign(groups, [1 - test_share, test_share], rng)
            is_test = patients.map(first).to_numpy() == 1
        else:
            is_test = np.zeros(len(out), bool)
        fold = assign_folds(patients[~is_test].to_numpy(), strata[~is_test].to_numpy(), folds, seed)
        out["split"] = np.where(is_test, "test", "train")
        rest = iter(fold.tolist())
        out["fold"] = pd.Series(["" if t else next(rest) for t in is_test], index=out.index, dtype=object)
        return out
    names = {1: ("train",), 2: ("train", "val"), 3: SPLIT_NAMES}[len(ratios)]
    bins = _assign(groups, ratios, rng)
    out["split"] = [names[bins[p]] for p in patients]
    return out


def summary(frame: pd.DataFrame, by: str, stratify: str | None, column: str = "split") -> pd.DataFrame:
    """Patients and images per split, and images per stratum value."""
    rows = []
    for name, g in frame.groupby(column, sort=False):
        row = {column: name, "patients": g[by].nunique(), "images": len(g)}
        if stratify:
            counts = g[stratify].astype(str).value_counts().sort_index()
            row.update({f"{stratify}={k}": int(v) for k, v in counts.items()})
        rows.append(row)
    order = {n: i for i, n in enumerate(SPLIT_NAMES)}
    table = pd.DataFrame(rows).fillna(0)
    return table.sort_values(column, key=lambda s: s.map(lambda v: order.get(v, 99) if isinstance(v, str) else v))


def run_split(manifest: str | Path, out: str | Path | None = None, by: str = "patient_id",
              stratify: str | None = "label", ratios=(0.7, 0.15, 0.15), folds: int | None = None, seed: int = 0,
              force: bool = False) -> tuple[Path, pd.DataFrame]:
    """Read MANIFEST, split it, write OUT (default MANIFEST_split.csv); paths stay valid from OUT's folder."""
    from vfa.runs import atomic_write

    manifest = Path(manifest)
    if not manifest.is_file():
        raise DataError(f"manifest not found: {manifest}")
    try:
        frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{manifest}: not a readable CSV manifest ({type(exc).__name__}: {exc})") from None
    if frame.empty:
        raise DataError(f"{manifest}: the manifest has no rows")
    out = refuse_existing(Path(out) if out else manifest.with_name(f"{manifest.stem}_split.csv"), force,
                          inputs=[manifest])
    if out.resolve() == manifest.resolve():
        raise DataError("--out must differ from the input manifest (the input is never changed)")
    result = split_manifest(frame, by, stratify, ratios, folds, seed)
    path_col = next((c for c in frame.columns if c.strip().lower() in MANIFEST_PATH_COLUMNS), None)
    if path_col and out.parent.resolve() != manifest.parent.resolve():
        def rebase(p: str) -> str:
            if not p or os.path.isabs(p):
                return p
            return Path(os.path.relpath(manifest.parent.resolve() / p, out.parent.resolve())).as_posix()
        result[path_col] = result[path_col].map(rebase)
    # no patient in two splits (or folds): by construction, verified anyway
    for col in ("split", "fold"):
        if col in result:
            spread = result[result[col] != ""].groupby(by)[col].nunique()
            assert (spread <= 1).all(), f"patient in two {col}s"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, result.to_csv(index=False))
    return out, result


def format_summary(table: pd.DataFrame) -> str:
    from vfa.data.check import text_table

    rows = [[str(v) if not isinstance(v, float) else f"{v:g}" for v in r] for r in table.itertuples(index=False)]
    return "\n".join(text_table([str(c) for c in table.columns], rows))
