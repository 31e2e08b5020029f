"""Labelled image lists from class folders or manifest CSVs, checked before any work starts.

Light on purpose (numpy, pandas, no torch): `vfa check-data` and `vfa split` start fast. `vfa.data`
re-exports everything here.

`load_samples(folder_or_manifest)` is the one way a data argument becomes `Samples`, for train,
evaluate, calibrate, predict and check-data alike. A manifest is a CSV with `path,label` (the
path column may be `filename` or `file`) and optionally `patient_id`, `study_date`, `split` and
any other columns; paths are relative to the manifest's folder; labels are class names
(norm/frac) or indices (0/1). `FILE.csv:SPLIT` selects
the rows of one split; train/val/test pick their own split of a manifest that has a `split` column.
"""
from __future__ import annotations

import csv
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from vfa.io import inspect_file, is_image_file
from vfa.io.errors import MIN_SIDE
from vfa.io.identifiers import public_path

MANIFEST_PATH_COLUMNS = ("path", "filename", "file")  # the first present names the image files


class DataError(ValueError):
    """A dataset-level problem (missing folder, empty class, bad files under --on-bad-file error)."""


@dataclass
class Samples:
    paths: list[str]
    labels: list[int]
    root: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    classes: tuple[str, ...] = ("norm", "frac")
    # per-image columns parallel to paths: a manifest's patient_id, study_date, split, image_id
    # (the --id-column), and after `validate` the one-way DICOM patient key "_dicom_patient"
    columns: dict[str, list] = field(default_factory=dict)
    hashes: list[str] | None = None  # decoded-pixel hashes, set by validate
    source: str = ""                 # the folder or manifest (with :split) they came from

    def counts(self) -> dict[int, int]:
        return {c: self.labels.count(c) for c in sorted(set(self.labels))}

    def subset(self, keep: list[int], skipped: list[tuple[str, str]] | None = None) -> Samples:
        return Samples([self.paths[i] for i in keep], [self.labels[i] for i in keep], self.root,
                       list(self.skipped if skipped is None else skipped), self.classes,
                       {k: [v[i] for i in keep] for k, v in self.columns.items()},
                       [self.hashes[i] for i in keep] if self.hashes is not None else None, self.source)

    def rel_paths(self) -> list[str]:
        """Paths relative to the folder (or the manifest's folder); absolute ones outside it as given."""
        out = []
        for p in self.paths:
            try:
                out.append(Path(p).relative_to(self.root).as_posix() if self.root else Path(p).as_posix())
            except ValueError:
                out.append(Path(p).as_posix())
        return out

    def ids(self) -> list[str]:
        """Image IDs for outputs: the manifest's chosen id column, else the relative path."""
        return [str(v) for v in self.columns["image_id"]] if "image_id" in self.columns else self.rel_paths()


def scan_folder(root: str | Path, classes=("norm", "frac")) -> Samples:
    """List `root/<class>/*` images in sorted order; non-image files are recorded as skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    missing = [c for c in classes if not (root / c).is_dir()]
    if missing:
        raise DataError(_missing_classes(root, classes, missing))
    paths, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_dir() or path.name.startswith("."):
                continue
            if is_image_file(path):  # image extensions, .dcm, and extension-less DICOM (magic DICM)
                paths.append(str(path))
                labels.append(label)
            else:
                what = f"extension '{path.suffix}'" if path.suffix else "no extension and no DICOM header"
                skipped.append((str(path), f"not an image file ({what})"))
    return Samples(paths, labels, str(root), skipped, tuple(classes), source=str(root))


def _missing_classes(root: Path, classes: tuple[str, ...], missing: list[str]) -> str:
    """What a folder without its class folders holds, and what to pass instead: its split folders
    that have them (a `vfa synth` root) or its manifest's splits; else the names to rename."""
    subs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    what = (f"{root}: missing class folder(s) {', '.join(missing)} (expected {'/'.join(classes)}); it holds "
            + (", ".join(f"{d}/" for d in subs[:8]) + (f" and {len(subs) - 8} more" if len(subs) > 8 else "")
               if subs else "no folders"))
    splits = [str(root / d) for d in subs if all((root / d / c).is_dir() for c in classes)]
    manifest = manifest_beside(root) if splits else None
    named = manifest_splits(manifest) if manifest and manifest.parent == root else []
    also = f", or {manifest}:SPLIT ({', '.join(named)})" if named else ""
    if splits:
        return f"{what}, with {'/'.join(classes)}: pass one of them ({', '.join(splits)}){also}"
    return f"{what}: rename them, or list the images in a manifest .csv (path,label)" if subs else what


def manifest_beside(folder: str | Path) -> Path | None:
    """The manifest.csv in `folder` or its parent (DATA/test -> DATA/manifest.csv), as `vfa synth`
    writes one: where check-data finds patient IDs and evaluate finds boxes for a folder."""
    for d in (Path(folder), Path(folder).parent):
        if (d / "manifest.csv").is_file():
            return d / "manifest.csv"
    return None


def split_source(source: str | Path) -> tuple[Path, str | None]:
    """'data/m.csv:val' -> (Path('data/m.csv'), 'val'); anything else -> (Path(source), None)."""
    text = str(source)
    low = text.lower()
    if ".csv:" in low and not Path(text).exists():
        cut = low.rindex(".csv:") + 4
        return Path(text[:cut]), text[cut + 1:] or None
    return Path(text), None


def is_manifest(source: str | Path) -> bool:
    path, _ = split_source(source)
    return path.suffix.lower() == ".csv" and not path.is_dir()


def manifest_splits(source: str | Path) -> list[str]:
    """The distinct values of a manifest's split column ([] without one or when unreadable)."""
    path, _ = split_source(source)
    try:
        import pandas as pd

        frame = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=lambda c: c.strip().lower() == "split")
    except Exception:
        return []
    return sorted(set(frame.iloc[:, 0].str.strip())) if frame.shape[1] else []


def _parse_label(value: str, classes: tuple[str, ...]) -> tuple[int | None, str | None]:
    v = value.strip()
    if v == "":
        return None, "missing label"
    if v in classes:
        return classes.index(v), None
    try:
        f = float(v)
    except ValueError:
        f = None
    if f is not None and f == int(f) and 0 <= int(f) < len(classes):
        return int(f), None
    return None, f"unknown label '{v}' (expected {', '.join(classes)} or 0..{len(classes) - 1})"


def refuse_unknown_labels(path: Path, unknown: dict[str, int], labels: list[int],
                          classes: tuple[str, ...]) -> None:
    """A label vocabulary vfa does not read (normal/fracture) is the manifest's problem, not its
    files': when the rows with `unknown` labels ({value: rows}) leave a class without any row,
    skipping them (--on-bad-file skip) could not help, so name the values found and those expected.
    A stray typo among good rows stays a skipped row, as any bad row."""
    if not unknown or all(c in labels for c in range(len(classes))):
        return
    ranked = sorted(unknown.items(), key=lambda kv: -kv[1])
    values = ", ".join(f"'{v}' ({n} row{'s' if n > 1 else ''})" for v, n in ranked[:6])
    more = f" and {len(ranked) - 6} other value(s)" if len(ranked) > 6 else ""
    codes = ", ".join(f"{i} = {c}" for i, c in enumerate(classes))
    raise DataError(f"{path}: label values {values}{more} are not vfa's: expected {' or '.join(classes)} "
                    f"(or {codes}); rewrite the label column")


def read_manifest(path: str | Path, classes=("norm", "frac"), split: str | None = None,
                  id_column: str | None = None, labels: bool = True) -> Samples:
    """Samples from a manifest CSV. `split` keeps the rows whose split column equals it ('all' or
    None: every row, refused when the manifest holds several splits). Rows with a missing or
    unknown label, an empty path or a path listed twice are recorded as skipped with the reason
    (so `validate` stops or reports them); `labels=False` (predict) ignores the label column."""
    from vfa.io.tables import read_table

    path = Path(path)
    frame = read_table(path, "manifest", DataError)
    lower = {c.lower(): c for c in frame.columns}
    path_col = next((lower[c] for c in MANIFEST_PATH_COLUMNS if c in lower), None)
    if path_col is None:
        first, *others = MANIFEST_PATH_COLUMNS
        raise DataError(f"{path}: no '{first}' column, nor {' or '.join(repr(c) for c in others)} (columns: "
                        f"{', '.join(frame.columns) or 'none'}); name the column of image files one of those: "
                        f"a manifest needs path,label[,patient_id,study_date,split,...]")
    label_col = lower.get("label")
    if labels and label_col is None:
        raise DataError(f"{path}: no 'label' column (columns: {', '.join(frame.columns)})")
    if id_column and id_column not in frame.columns:
        raise DataError(f"{path}: no column '{id_column}' for image IDs (columns: {', '.join(frame.columns)})")
    frame["_line"] = range(2, len(frame) + 2)  # CSV line numbers for messages (header is line 1)
    split_col = lower.get("split")
    source = str(path)
    if split and split != "all":
        if split_col is None:
            raise DataError(f"{path}: no 'split' column to select split '{split}' from")
        present = sorted(set(frame[split_col].str.strip()))
        frame = frame[frame[split_col].str.strip() == split]
        if frame.empty:
            raise DataError(f"{path}: no rows with split '{split}' (splits present: {', '.join(present)})")
        source = f"{path}:{split}"
    elif split is None and split_col is not None:
        present = sorted(set(frame[split_col].str.strip()))
        if len(present) > 1:
            raise DataError(f"{path} holds several splits ({', '.join(present)}): name one as {path}:SPLIT, "
                            f"e.g. {path}:{present[-1]}")
    if frame.empty:
        raise DataError(f"{path}: the manifest has no rows")
    root = path.parent
    paths, labs, skipped, keep_rows, seen, unknown = [], [], [], [], {}, {}
    for row in frame.itertuples(index=False):
        rec = dict(zip(frame.columns, row))
        raw = str(rec[path_col]).strip()
        line = rec["_line"]
        if not raw:
            skipped.append((f"{path} line {line}", "empty path"))
            continue
        file = Path(raw) if Path(raw).is_absolute() else root / raw
        label, problem = _parse_label(rec[label_col], classes) if labels else (0, None)
        if problem and problem.startswith("unknown label"):
            unknown[rec[label_col].strip()] = unknown.get(rec[label_col].strip(), 0) + 1
        if problem is None and str(file) in seen:
            problem = f"listed twice in {path.name} (lines {seen[str(file)]} and {line})"
        if problem is not None:
            skipped.append((str(file), f"{problem} ({path.name} line {line})"))
            continue
        seen[str(file)] = line
        paths.append(str(file))
        labs.append(label)
        keep_rows.append(rec)
    if labels:
        refuse_unknown_labels(path, unknown, labs, classes)
    columns = {}
    for name in ("patient_id", "study_date", "split", "fold"):
        if name in lower:
            columns[name] = [str(r[lower[name]]).strip() for r in keep_rows]
    columns["_line"] = [r["_line"] for r in keep_rows]
    if id_column:
        columns["image_id"] = [str(r[id_column]).strip() for r in keep_rows]
    return Samples(paths, labs, str(root), skipped, tuple(classes), columns, source=source)


def load_samples(source: str | Path, classes=("norm", "frac"), split: str | None = None,
                 id_column: str | None = None, labels: bool = True) -> Samples:
    """A data argument -> Samples: a class folder, a manifest CSV or 'MANIFEST.csv:SPLIT'.

    `split` is the caller's role (train/val/test): it selects that split of a manifest with a split
    column unless the argument names one; 'all' keeps every row."""
    path, named = split_source(source)
    if is_manifest(source):
        if not path.is_file():
            raise DataError(f"manifest not found: {path}")
        if named is None and split not in (None, "all") and "split" not in _columns(path):
            split = "all"  # a manifest without a split column is one whole set
        return read_manifest(path, classes, named or split, id_column, labels)
    if path.is_dir():
        if id_column:
            raise DataError(f"--id-column needs a manifest; {path} is a folder (use --id-regex)")
        return scan_folder(path, classes)
    if path.exists():
        raise DataError(f"{path} is neither a folder with {'/'.join(classes)} subfolders nor a manifest .csv")
    raise DataError(f"data folder not found: {path} (expected a folder with {'/'.join(classes)} subfolders, "
                    f"or a manifest .csv)")


def _columns(path: Path) -> set[str]:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), [])
    return {c.strip().lower() for c in header}


def inspect_all(paths: list[str], frame: int | None = None, workers: int | None = None,
                min_side: int = MIN_SIDE, progress: str = "") -> list[dict]:
    """`vfa.io.inspect_file` over many files, in worker processes when there are enough of them, with a
    progress bar labelled `progress` (none when empty): 100,000 files take minutes."""
    from tqdm import tqdm

    workers = workers or min(4, os.cpu_count() or 1)
    fn = partial(inspect_file, frame=frame, min_side=min_side)
    with ProcessPoolExecutor(workers) if workers > 1 and len(paths) > 64 else nullcontext() as pool:
        results = pool.map(fn, paths, chunksize=16) if pool else map(fn, paths)
        return list(tqdm(results, total=len(paths), desc=progress, unit="file", disable=not progress))


def validate(samples: Samples, on_bad_file: str = "error", workers: int | None = None,
             need_classes: tuple[int, ...] = (), frame: int | None = None, min_side: int = MIN_SIDE,
             progress: bool = True) -> Samples:
    """Decode every image in parallel; `error` raises naming every bad file, `skip` drops and records them.

    The kept Samples carry the hash of each decoded image (and the one-way key of a DICOM file's
    PatientID) for `check_leakage`."""
    if on_bad_file not in ("error", "skip"):
        raise DataError(f"--on-bad-file must be 'error' or 'skip', got '{on_bad_file}'")
    results = inspect_all(samples.paths, frame, workers, min_side, "decode images" if progress else "")
    bad = [(r["path"], r["reason"]) for r in results if r["reason"] is not None]
    problems = samples.skipped + bad
    where = samples.source or samples.root
    if problems and on_bad_file == "error":
        listing = "\n".join(f"  {p}: {r}" for p, r in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} unusable file(s) under {where} "
                        f"(use --on-bad-file skip to leave them out):\n{listing}{more}")
    keep = [i for i, r in enumerate(results) if r["reason"] is None]
    out = samples.subset(keep, problems)
    out.hashes = [results[i]["hash"] for i in keep]
    keys = [results[i].get("patient_key") for i in keep]
    if any(keys):
        out.columns["_dicom_patient"] = keys
    for c in need_classes:
        if c not in out.labels:
            if is_manifest(where):
                raise DataError(f"{where}: no usable images of class '{samples.classes[c]}'")
            raise DataError(f"{Path(samples.root) / samples.classes[c]}: no usable images (empty class folder?)")
    return out


def check_leakage(sets: dict[str, Samples], limit: int = 20) -> list[str]:
    """Images or patients present in two splits, naming the files (never the patient ID).

    Content: equal decoded-pixel hashes (`validate` sets them). Patients: a manifest's patient_id,
    else the one-way key of the DICOM PatientID."""
    problems: list[str] = []
    first_hash: dict[str, tuple[str, str]] = {}
    first_patient: dict[str, tuple[str, str]] = {}
    for name, s in sets.items():
        for path, h in zip(s.paths, s.hashes or []):
            other = first_hash.setdefault(h, (name, path))
            if other[0] != name:
                problems.append(f"the same image content in {other[0]} and {name}: {other[1]} and {path}")
        for kind in ("patient_id", "_dicom_patient"):
            for path, pid in zip(s.paths, s.columns.get(kind, [])):
                if not pid:
                    continue
                other = first_patient.setdefault(f"{kind}:{pid}", (name, path))
                if other[0] != name:
                    what = "patient_id" if kind == "patient_id" else "DICOM PatientID"
                    problems.append(f"the same patient ({what}) in {other[0]} and {name}: {other[1]} and {path}")
    return problems


def leakage_error(problems: list[str], limit: int = 20) -> DataError:
    listing = "\n".join(f"  {p}" for p in problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return DataError(f"data leakage between splits ({len(problems)} case(s)); split by patient "
                     f"(vfa split MANIFEST --by patient_id) and remove duplicates:\n{listing}{more}")


def duplicates_within(samples: Samples) -> list[list[str]]:
    """Groups of files in one set whose decoded pixels are identical."""
    groups: dict[str, list[str]] = {}
    for path, h in zip(samples.paths, samples.hashes or []):
        groups.setdefault(h, []).append(path)
    return [g for g in groups.values() if len(g) > 1]


def write_skipped(samples: Samples, path: str | Path, keep_identifiers: bool = False) -> None:
    """The skipped files and why, as CSV (atomically); DICOM UIDs in their names hashed unless asked."""
    if not samples.skipped:
        return
    from vfa.runs import write_csv

    write_csv(path, ("file", "reason"), ((f if keep_identifiers else public_path(f), r) for f, r in samples.skipped))


def expand_inputs(inputs, id_column: str | None = None, ids: dict | None = None) -> list[str]:
    """Files, folders (recursively: image files, DICOM by extension or by its DICM magic), manifest
    CSVs (their path column; 'FILE.csv:SPLIT' for one split) and globs -> sorted, de-duplicated
    paths. With `id_column`, `ids` receives path -> that manifest column."""
    import glob

    from vfa.io import is_image_file

    paths: list[str] = []
    for item in [inputs] if isinstance(inputs, str | Path) else inputs:
        p = Path(item)
        if is_manifest(item):
            s = load_samples(item, split="all", id_column=id_column, labels=False)  # FILE.csv:SPLIT wins
            paths += s.paths
            if ids is not None and id_column:
                ids.update(zip(s.paths, s.ids()))
        elif p.is_dir():
            paths += sorted(str(f) for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                            and is_image_file(f))
        elif p.exists():
            paths.append(str(p))
        else:
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                raise FileNotFoundError(f"no such file, folder or glob match: {item}")
            paths += matches
    return list(dict.fromkeys(paths))
