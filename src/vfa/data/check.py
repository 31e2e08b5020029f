"""`vfa check-data`: one multi-process pass over a dataset before a long run.

Every file is decoded exactly as training would decode it (`vfa.io.inspect_file`), and the report
gives counts per class and split, image sizes, bit depths, formats, DICOM modalities, photometric
interpretations, transfer syntaxes and pixel spacings, duplicate images (by decoded pixels),
images or patients in two splits, every unusable file with its reason, and a verdict. DICOM
identifiers never appear in it unless `keep_identifiers=True`.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

from vfa.data.samples import (DataError, Samples, check_leakage, is_manifest, load_samples, manifest_beside,
                              read_manifest, scan_folder, split_source, inspect_all)

SPLIT_ORDER = ("train", "val", "test")


def _order(names) -> list[str]:
    return sorted(names, key=lambda n: (SPLIT_ORDER.index(n) if n in SPLIT_ORDER else len(SPLIT_ORDER), n))


def discover(source: str | Path, classes=("norm", "frac")) -> tuple[str, dict[str, Samples], list]:
    """(layout, {split: Samples}, problems) for a class folder, a folder of split folders
    (train/val/test each with class folders, as `vfa synth` writes), or a manifest."""
    path, named = split_source(source)
    if is_manifest(source):
        if named:
            s = load_samples(source, classes)
            return "manifest", {named: s}, list(s.skipped)
        whole = read_manifest(path, classes, split="all")
        splits = whole.columns.get("split")
        if not splits:
            return "manifest", {"all": whole}, list(whole.skipped)
        sets = {}
        for name in _order(set(splits)):
            keep = [i for i, v in enumerate(splits) if v == name]
            sets[name or "(no split)"] = whole.subset(keep, [])
            sets[name or "(no split)"].source = f"{path}:{name}"
        return "manifest with splits", sets, list(whole.skipped)
    if not path.is_dir():
        raise DataError(f"data folder not found: {path} (nor a manifest .csv)" if not path.exists() else
                        f"{path} is neither a folder nor a manifest .csv")
    if all((path / c).is_dir() for c in classes):
        s = scan_folder(path, classes)
        return "class folders", {path.name or str(path): s}, list(s.skipped)
    subs = [d for d in path.iterdir() if d.is_dir() and all((d / c).is_dir() for c in classes)]
    if not subs:
        scan_folder(path, classes)  # raises the missing-class-folder error naming what the folder holds
    sets, problems = {}, []
    for name in _order([d.name for d in subs]):
        s = scan_folder(path / name, classes)
        sets[name] = s
        problems += s.skipped
    return "split folders", sets, problems


def patients_beside(folder: str | Path, sets: dict[str, Samples]) -> str | None:
    """Patient IDs for a folder's images from the manifest.csv beside it (`vfa synth` writes one;
    evaluate finds it there too), so the patient leakage check runs on folders as on the manifest.
    Returns the manifest used, or None (no manifest, no patient_id column, or none of its files)."""
    manifest = manifest_beside(folder)
    if manifest is None:
        return None
    try:
        rows = read_manifest(manifest, split="all", labels=False)
    except (DataError, OSError):  # a manifest.csv of another kind: the folder is checked on its own
        return None
    ids = dict(zip((os.path.abspath(p) for p in rows.paths), rows.columns.get("patient_id", [])))
    found = False
    for s in sets.values():
        column = [ids.get(os.path.abspath(p), "") for p in s.paths]
        if any(column):
            s.columns["patient_id"], found = column, True
    return str(manifest) if found else None


def _top(counter: Counter, n: int = 6) -> list[list]:
    items = counter.most_common()
    out = [[k, v] for k, v in items[:n]]
    if len(items) > n:
        out.append([f"{len(items) - n} other value(s)", sum(v for _, v in items[n:])])
    return out


def check_data(source: str | Path, classes=("norm", "frac"), frame: int | None = None,
               workers: int | None = None, keep_identifiers: bool = False) -> dict:
    """The report as a JSON-safe dict (see `format_report`)."""
    t0 = time.perf_counter()
    classes = tuple(classes)
    layout, sets, problems = discover(source, classes)
    patients_from = None if is_manifest(source) else patients_beside(source, sets)
    paths = [p for s in sets.values() for p in s.paths]
    workers = workers or os.cpu_count() or 1
    results = dict(zip(paths, inspect_all(paths, frame, workers, progress="check files")))
    unusable = [{"file": p, "reason": r} for p, r in problems]
    ok_sets: dict[str, Samples] = {}
    rows = []
    for name, s in sets.items():
        keep = [i for i, p in enumerate(s.paths) if results[p]["reason"] is None]
        bad = [p for p in s.paths if results[p]["reason"] is not None]
        unusable += [{"file": p, "reason": results[p]["reason"]} for p in bad]
        ok = s.subset(keep, [])
        ok.hashes = [results[p]["hash"] for p in ok.paths]
        keys = [results[p].get("patient_key") for p in ok.paths]
        if any(keys):
            ok.columns["_dicom_patient"] = keys
        ok_sets[name] = ok
        counts = {c: ok.labels.count(i) for i, c in enumerate(classes)}
        rows.append({"split": name, **counts, "usable": len(ok.paths), "unusable": len(bad) + len(s.skipped)})
    good = [results[p] for p in paths if results[p]["reason"] is None]
    dicom = [r for r in good if r["format"] == "DICOM"]
    spacing = Counter("x".join(f"{v:g}" for v in r["pixel_spacing"]) for r in dicom if r.get("pixel_spacing"))
    stats = {
        "image size (HxW)": _top(Counter(f"{r['shape'][0]}x{r['shape'][1]}" for r in good)),
        "bit depth": _top(Counter(f"{r['bits']}-bit" for r in good)),
        "format": _top(Counter(r["format"] for r in good)),
        "color mode": _top(Counter(r["mode"] for r in good if r["format"] != "DICOM")),
        "modality": _top(Counter(r["modality"] for r in dicom)),
        "photometric": _top(Counter(r["photometric"] for r in dicom)),
        "transfer syntax": _top(Counter(r["transfer_syntax"] for r in dicom)),
        "VOI applied": _top(Counter(r["voi"] for r in dicom)),
        "pixel spacing (mm)": _top(spacing) + ([["none", len(dicom) - sum(spacing.values())]]
                                               if dicom and sum(spacing.values()) < len(dicom) else []),
    }
    by_hash: dict[str, list[tuple[str, str]]] = {}
    for name, s in ok_sets.items():
        for p, h in zip(s.paths, s.hashes):
            by_hash.setdefault(h, []).append((name, p))
    duplicates = [[{"split": n, "file": p} for n, p in g] for g in by_hash.values() if len(g) > 1]
    leakage = check_leakage(ok_sets) if len(ok_sets) > 1 else []
    n_patients = {kind: len({v for s in ok_sets.values() for v in s.columns.get(kind, []) if v})
                  for kind in ("patient_id", "_dicom_patient")}

    errors, warnings = _problems(rows, classes, unusable, leakage, duplicates, good, stats)
    verdict = ("NOT READY" if errors else "READY") + (f": {len(errors)} problem(s)" if errors else "") + \
        (f", {len(warnings)} warning(s)" if warnings else "")
    report = {
        "source": str(source), "layout": layout, "classes": list(classes), "frame": frame,
        "files": len(paths) + len(problems), "seconds": round(time.perf_counter() - t0, 2), "workers": workers,
        "splits": rows, "stats": stats, "duplicates": duplicates, "leakage": leakage,
        "patients": {"manifest patient_id": n_patients["patient_id"],
                     "DICOM PatientID": n_patients["_dicom_patient"]}, "patients_from": patients_from,
        "unusable": unusable, "errors": errors, "warnings": warnings, "verdict": verdict, "ready": not errors,
    }
    if keep_identifiers:
        from vfa.io.identifiers import dicom_identifiers

        report["identifiers"] = {r["path"]: dicom_identifiers(r["path"]) for r in dicom}
    return report


def _problems(rows, classes, unusable, leakage, duplicates, good, stats) -> tuple[list[str], list[str]]:
    """(errors that stop a run, warnings) of a dataset report."""
    errors, warnings = [], []
    if unusable:
        errors.append(f"{len(unusable)} unusable file(s): a run stops on them (default --on-bad-file error); "
                      f"fix or remove them, or pass --on-bad-file skip to leave them out")
    if leakage:
        errors.append(f"{len(leakage)} image(s)/patient(s) in two splits (training refuses this)")
    for row in rows:
        empty = [c for c in classes if row[c] == 0]
        if row["usable"] == 0:
            errors.append(f"{row['split']}: no usable images")
        elif empty and row["split"] not in ("test",):
            what = "a validation set with a single class" if row["split"] == "val" else "a single class"
            errors.append(f"{row['split']}: no usable '{', '.join(empty)}' images ({what}; training needs both)")
        elif empty:
            warnings.append(f"{row['split']}: no usable '{', '.join(empty)}' images (AUC, Sn or Sp undefined)")
        elif min(row[c] for c in classes) * 20 < max(row[c] for c in classes):
            warnings.append(f"{row['split']}: classes are imbalanced beyond 1:20")
    within = [g for g in duplicates if len({d["split"] for d in g}) == 1]
    if within:
        warnings.append(f"{len(within)} group(s) of identical images within a split")
    color = sum(1 for r in good if r.get("mode") in ("RGB", "RGBA", "LA", "P", "PA", "CMYK", "YCbCr")
                or (r["format"] == "DICOM" and r.get("samples", 1) > 1)
                or r.get("photometric") == "PALETTE COLOR")
    if color:
        warnings.append(f"{color} color image(s) (RGB/RGBA/YBR/palette): converted to gray luma, alpha dropped")
    if len(stats["image size (HxW)"]) > 1:
        warnings.append("images of several sizes (all are resized to data.size; check the aspect ratio)")
    if len(stats["bit depth"]) > 1:
        warnings.append("mixed bit depths (each is scaled to [0, 1] by its own range; consider "
                        "--set data.normalize=percentile)")
    return errors, warnings


def text_table(header: list[str], rows: list[list]) -> list[str]:
    """The lines of a plain-text table: columns padded to their widest cell, the first left-aligned,
    the rest right-aligned (numbers line up)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def fmt(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(cells[0]), *(fmt(r) for r in cells[1:])]


def format_report(rep: dict, max_listed: int = 20) -> str:
    classes = rep["classes"]
    lines = [f"vfa check-data {rep['source']}: {rep['layout']}, {rep['files']} files, checked in "
             f"{rep['seconds']:.1f} s ({rep['workers']} processes)", ""]
    total = {c: sum(r[c] for r in rep["splits"]) for c in (*classes, "usable", "unusable")}
    rows = [[r["split"], *(r[c] for c in classes), r["usable"], r["unusable"]] for r in rep["splits"]]
    unattributed = len(rep["unusable"]) - total["unusable"]  # manifest rows whose split is unknown
    if unattributed:
        rows.append(["(manifest rows)", *("" for _ in classes), "", unattributed])
    if len(rows) > 1:
        rows.append(["total", *(total[c] for c in classes), total["usable"], len(rep["unusable"])])
    lines += text_table(["split", *classes, "usable", "unusable"], rows) + [""]
    width = max(len(k) for k in rep["stats"]) + 2
    for key, values in rep["stats"].items():
        if values:  # DICOM rows only when there is DICOM, color mode only for other formats
            lines.append(f"{key.ljust(width)}" + ", ".join(f"{k}: {v}" for k, v in values))
    named = {"manifest patient_id": f"patient_id of {rep['patients_from']}"} if rep.get("patients_from") else {}
    pats = ", ".join(f"{n} distinct ({named.get(k, k)})" for k, n in rep["patients"].items() if n) or "no patient IDs"
    lines.append(f"{'patients'.ljust(width)}{pats}")
    within = [g for g in rep["duplicates"] if len({d["split"] for d in g}) == 1]
    lines.append(f"{'duplicates'.ljust(width)}" + (f"{len(rep['duplicates'])} group(s) of identical decoded "
                                                   f"images" if rep["duplicates"] else "none (decoded pixels)"))
    for g in within[:5]:
        lines.append(f"  {g[0]['split']}: " + ", ".join(d["file"] for d in g[:4]))
    if rep["leakage"]:
        lines += ["", f"in two splits ({len(rep['leakage'])}):"] + [f"  {m}" for m in rep["leakage"][:max_listed]]
    if rep["unusable"]:
        lines += ["", f"unusable files ({len(rep['unusable'])}):"]
        lines += [f"  {u['file']}: {u['reason']}" for u in rep["unusable"][:max_listed]]
        if len(rep["unusable"]) > max_listed:
            lines.append(f"  ... and {len(rep['unusable']) - max_listed} more (--json lists all)")
    if rep.get("identifiers"):
        lines += ["", f"identifiers kept (--keep-identifiers) for {len(rep['identifiers'])} DICOM file(s): see --json"]
    lines.append("")
    for e in rep["errors"]:
        lines.append(f"problem: {e}")
    for w in rep["warnings"]:
        lines.append(f"warning: {w}")
    lines.append(f"verdict: {rep['verdict']}")
    return "\n".join(lines)
