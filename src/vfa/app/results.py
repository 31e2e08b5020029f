"""The reads as results: reads.csv (one row per image and reader, the current read), the audit
chain behind them (vfa.app.audit), and the agreement between readers and with the model
(vfa.cohort.agreement: Cohen's kappa and PABAK with CIs for fracture yes/no, weighted kappa for the
Genant grades). Free text (a reader's note) is written so that a spreadsheet shows it as text:
OWASP's rule for CSV injection, a leading = + - @ tab or CR gets a ' in front."""
from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

from vfa.app import audit
from vfa.app.cases import LEVELS, ReviewError
from vfa.app.db import current_reads, get_meta, open_db, overall_grade
from vfa.cohort.agreement import agreement, weighted_kappa
from vfa.io.identifiers import public_path

FIELDS = ("image_id", "file", "path", "reader", "label", "grade", "shape", "confidence", "note", "version",
          "read_at", "blinded", "raw", "predicted", "data_split", *(f"grade_{lv}" for lv in LEVELS))
GRADES = (0, 1, 2, 3)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def as_text(value: str) -> str:
    """A free-text cell a spreadsheet will not run as a formula."""
    return "'" + value if value.startswith(FORMULA_START) else value


def _rows(reads: list[dict], keep_identifiers: bool) -> list[dict]:
    out = []
    for r in reads:
        path = r["path"] or ""
        row = {"image_id": r["image_id"] if keep_identifiers else public_path(r["image_id"]),
               "file": (r["file"] or "") if keep_identifiers else public_path(r["file"] or ""),
               "path": path if keep_identifiers else public_path(path), "reader": r["reader"], "label": r["fracture"],
               "grade": "" if overall_grade(r) is None else overall_grade(r), "shape": r["shape"] or "",
               "confidence": "" if r["confidence"] is None else r["confidence"], "note": as_text(r["note"] or ""),
               "version": r["version"], "read_at": r["created_at"], "blinded": r["blinded"],
               "raw": "" if r["p"] is None else r["p"], "predicted": "" if r["call"] is None else r["call"],
               "data_split": r["split"] or ""}
        row.update({f"grade_{lv}": g for lv, g in r["grades"].items()})
        out.append(row)
    return out


def export_reads(db: str | Path, out: str | Path, reader: str | None = None, agreement_out: str | Path | None = None,
                 force: bool = False, keep_identifiers: bool = False, audit_out: str | Path | None = None) -> dict:
    """reads.csv: each image and reader's current read (label = fracture 0/1, the Genant grade, per-level
    grades, shape, confidence, note, version, time) beside the model's P (raw) and call (predicted);
    `reader` keeps one reader's rows: a manifest for `vfa evaluate --data` (path, label) and a predictions
    file for `vfa cohort --reader label` (image_id, raw, predicted). Refuses to overwrite without `force`;
    written atomically. The audit chain is checked first: a database edited outside vfa is refused,
    naming the first entry or read that does not match; `audit_out` receives the whole chain."""
    from vfa.runs import write_csv, write_json

    out = Path(out)
    targets = [out] + [Path(p) for p in (agreement_out, audit_out) if p]
    db = Path(db)
    for t in targets:
        if t.exists() and not force:
            raise FileExistsError(f"{t} exists; pass --force to overwrite it")
        if t.resolve() == db.resolve():
            raise ReviewError(f"{t}: that is the review database")
    conn = open_db(db, create=False)
    try:
        intact, why, entries = audit.verify(conn)
        if not intact:
            raise ReviewError(f"{db}: the audit trail is broken: {why}; the database was changed outside vfa review")
        audit.record(conn, "export", "admin", "local", {"out": Path(out).name, "reader": reader or ""})
        if audit_out:
            write_csv(audit_out, audit.FIELDS, [dict(r) for r in conn.execute("SELECT * FROM audit ORDER BY id")])
        reads = current_reads(conn)
        if reader:
            reads = [r for r in reads if r["reader"] == reader]
            if not reads:
                raise ReviewError(f"{db}: no reads by reader {reader!r}")
        write_csv(out, FIELDS, _rows(reads, keep_identifiers))
        result = agreement_report(conn)
    finally:
        conn.close()
    if agreement_out:
        write_json(agreement_out, result)
    return {"rows": len(reads), "readers": sorted({r["reader"] for r in reads}), "agreement": result,
            "audit": {"entries": entries + 1, "intact": True}}


def _pair(a: dict, b: dict) -> dict:
    """Agreement of two {image_id: (fracture, grade)} maps on their common images."""
    common = sorted(set(a) & set(b))
    out = {"n": len(common)}
    if not common:
        return out
    out["fracture"] = agreement([a[k][0] for k in common], [b[k][0] for k in common])
    graded = [k for k in common if a[k][1] is not None and b[k][1] is not None]
    if graded:
        for w in ("linear", "quadratic"):
            out[f"grade_{w}"] = weighted_kappa([a[k][1] for k in graded], [b[k][1] for k in graded], GRADES, w)
    return out


def agreement_report(conn) -> dict:
    """agreement.json: every pair of readers and each reader against the model (fracture: kappa with CI,
    PABAK with CI; grades: linear and quadratic weighted kappa with CIs, where both graded)."""
    from vfa.runs import json_safe

    reads = [r for r in current_reads(conn) if r["idx"] is not None]
    by_reader: dict[str, dict] = {}
    for r in reads:
        by_reader.setdefault(r["reader"], {})[r["image_id"]] = (r["fracture"], overall_grade(r))
    model = {r["image_id"]: (r["call"], r["model_grade"]) for r in reads}
    names = sorted(by_reader)
    meta = get_meta(conn)
    result = {"readers": {n: len(by_reader[n]) for n in names}, "n_cases": meta.get("n"),
              "threshold": meta.get("threshold"), "score": meta.get("score"),
              "pairs": [{"a": x, "b": y, **_pair(by_reader[x], by_reader[y])} for x, y in combinations(names, 2)],
              "vs_model": [{"reader": x, **_pair(by_reader[x], model)} for x in names],
              "methods": "fracture yes/no: Cohen's kappa (Fleiss-Cohen-Everitt SE, Wald 95% CI) and PABAK (Wilson CI); "
                         "grades 0-3: weighted kappa, linear and quadratic, Wald 95% CI; each reader's current read"}
    return json_safe(json.loads(json.dumps(result, default=float)))
