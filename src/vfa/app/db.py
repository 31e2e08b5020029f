"""The review database (SQLite, stdlib): the cases, every read with its history, the sessions.

WAL mode and synchronous=FULL; each read is one `BEGIN IMMEDIATE` transaction committed before
the server answers, so a read the client saw acknowledged survives a SIGKILL of the server. A
read is never updated in place: an amendment is a new row with the next version (the history);
`latest` holds each (image, reader)'s current read for the worklist. A client's `request_id` is
unique, so a retried post stores nothing twice.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

from vfa.app import accounts, audit
from vfa.app.cases import LEVELS, Case, ReviewError
from vfa.spine import FRACTURE_SHAPES

SCHEMA = """
CREATE TABLE IF NOT EXISTS cases(idx INTEGER PRIMARY KEY, image_id TEXT UNIQUE NOT NULL, file TEXT, path TEXT,
    p REAL, call INTEGER, label INTEGER, split TEXT, heatmap TEXT, vertebrae TEXT, identifiers TEXT,
    model_grade INTEGER, unc REAL);
CREATE TABLE IF NOT EXISTS reads(id INTEGER PRIMARY KEY, image_id TEXT NOT NULL, reader TEXT NOT NULL,
    version INTEGER NOT NULL, fracture INTEGER NOT NULL, grade INTEGER, grades TEXT, shape TEXT,
    confidence INTEGER, note TEXT, blinded INTEGER, created_at TEXT NOT NULL, request_id TEXT UNIQUE,
    UNIQUE(image_id, reader, version));
CREATE TABLE IF NOT EXISTS latest(image_id TEXT NOT NULL, reader TEXT NOT NULL, read_id INTEGER NOT NULL,
    fracture INTEGER NOT NULL, grade INTEGER, PRIMARY KEY(image_id, reader));
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE INDEX IF NOT EXISTS cases_p ON cases(p);
CREATE INDEX IF NOT EXISTS cases_unc ON cases(unc);
"""
MAX_NOTE = 2000
READ_SHAPES = ("", *FRACTURE_SHAPES)  # a read's shape: none given, or a fracture's


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def connect(path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def open_db(path: str | Path, create: bool = True) -> sqlite3.Connection:
    path = Path(path)
    if not create and not path.is_file():
        raise ReviewError(f"review database not found: {path}")
    if create and not path.parent.is_dir():
        raise ReviewError(f"--db {path}: folder {path.parent} does not exist")
    try:
        conn = connect(path)
        conn.executescript(SCHEMA + audit.SCHEMA)
        accounts.migrate(conn)
        _audit_earlier_reads(conn)
    except sqlite3.DatabaseError as exc:
        raise ReviewError(f"{path}: not a usable vfa review database ({exc})") from None
    return conn


def _audit_earlier_reads(conn) -> None:
    """A database from before the audit trail: its reads enter the chain once, as found (client
    "migration"), so the chain covers every read from here on."""
    audited = conn.execute("SELECT 1 FROM audit LIMIT 1").fetchone()
    if audited or not conn.execute("SELECT 1 FROM reads LIMIT 1").fetchone():
        return
    with audit.transaction(conn):
        for r in conn.execute("SELECT * FROM reads ORDER BY id").fetchall():
            audit.record(conn, "read" if r["version"] == 1 else "amendment", r["reader"], "migration",
                         audit.read_detail(dict(r)))


class Local:
    """One connection per thread (the server's worker threads)."""

    def __init__(self, path):
        self.path, self._local = str(path), threading.local()

    def get(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
        return conn


def store_cases(conn: sqlite3.Connection, cases: list[Case], meta: dict) -> None:
    """Replace the worklist with `cases` (the reads, keyed by image_id, stay)."""
    thr = float(meta["threshold"])
    rows = [(c.idx, c.image_id, c.file, c.path, c.p, c.call, c.label, c.split, c.heatmap, json.dumps(c.vertebrae),
             json.dumps(c.identifiers), c.model_grade, abs(c.p - thr)) for c in cases]
    with audit.transaction(conn):
        conn.execute("DELETE FROM cases")
        conn.executemany("INSERT INTO cases VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])


def get_meta(conn) -> dict:
    return {r["key"]: json.loads(r["value"]) for r in conn.execute("SELECT key, value FROM meta")}


class BadRead(ValueError):
    """A read that fails validation (the server answers 422 with this message)."""


def _int(value, name: str, lo: int, hi: int, optional: bool = True) -> int | None:
    if value in (None, ""):
        if optional:
            return None
        raise BadRead(f"{name} is required")
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise BadRead(f"{name} must be an integer") from None
    if isinstance(value, float) and value != v or not lo <= v <= hi:
        raise BadRead(f"{name} must be in {lo}..{hi}")
    return v


def clean_read(data: dict) -> dict:
    """A posted read, validated: fracture 0/1, grade 0-3, per-level grades, shape, confidence 1-5, note."""
    if not isinstance(data, dict):
        raise BadRead("a read is a JSON object")
    grades = data.get("grades") or {}
    if not isinstance(grades, dict) or any(k not in LEVELS for k in grades):
        raise BadRead(f"grades: an object of levels ({LEVELS[0]}..{LEVELS[-1]}) to 0-3")
    grades = {k: _int(v, f"grade of {k}", 0, 3, optional=False) for k, v in grades.items()}
    shape = str(data.get("shape") or "")
    if shape not in READ_SHAPES:
        raise BadRead(f"shape must be one of {', '.join(FRACTURE_SHAPES)} or empty")
    note = str(data.get("note") or "")
    if len(note) > MAX_NOTE:
        raise BadRead(f"note is longer than {MAX_NOTE} characters")
    request_id = str(data.get("request_id") or "")[:100] or None
    return {"fracture": _int(data.get("fracture"), "fracture", 0, 1, optional=False),
            "grade": _int(data.get("grade"), "grade", 0, 3), "grades": grades, "shape": shape,
            "confidence": _int(data.get("confidence"), "confidence", 1, 5), "note": note, "request_id": request_id}


def add_read(conn: sqlite3.Connection, image_id: str, reader: str, read: dict, blinded: bool, client: str = "") -> dict:
    """Store one read (a new version if the reader read this image before) and its audit entry in one
    transaction; returns {"id", "version", "created_at", "duplicate"}. A repeated request_id returns
    the first."""
    with audit.transaction(conn):
        if read["request_id"]:
            row = conn.execute("SELECT id, version, created_at FROM reads WHERE request_id=?",
                               (read["request_id"],)).fetchone()
            if row:
                return {**dict(row), "duplicate": True}
        version = conn.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM reads WHERE image_id=? AND reader=?",
                               (image_id, reader)).fetchone()[0]
        created = now()
        cur = conn.execute("INSERT INTO reads(image_id, reader, version, fracture, grade, grades, shape, confidence, "
                           "note, blinded, created_at, request_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                           (image_id, reader, version, read["fracture"], read["grade"], json.dumps(read["grades"]),
                            read["shape"], read["confidence"], read["note"], int(blinded), created, read["request_id"]))
        conn.execute("INSERT OR REPLACE INTO latest VALUES (?,?,?,?,?)",
                     (image_id, reader, cur.lastrowid, read["fracture"], overall_grade(read)))
        stored = conn.execute("SELECT * FROM reads WHERE id=?", (cur.lastrowid,)).fetchone()
        audit.record(conn, "read" if version == 1 else "amendment", reader, client, audit.read_detail(dict(stored)))
    return {"id": cur.lastrowid, "version": version, "created_at": created, "duplicate": False}


def overall_grade(read: dict) -> int | None:
    """The image's grade: the overall one, else the worst level's, else 0 when no fracture."""
    if read.get("grade") is not None:
        return read["grade"]
    grades = read.get("grades") or {}
    if isinstance(grades, str):
        grades = json.loads(grades or "{}")
    if grades:
        return max(grades.values())
    return 0 if read.get("fracture") == 0 else None


def history(conn, image_id: str, reader: str | None = None) -> list[dict]:
    sql = "SELECT * FROM reads WHERE image_id=?" + (" AND reader=?" if reader else "") + " ORDER BY reader, version"
    rows = conn.execute(sql, (image_id, reader) if reader else (image_id,)).fetchall()
    return [{**dict(r), "grades": json.loads(r["grades"] or "{}")} for r in rows]


def current_reads(conn) -> list[dict]:
    """Every (image, reader)'s current read, joined to its case (None for a case no longer listed)."""
    rows = conn.execute("SELECT r.*, c.idx, c.file, c.path, c.p, c.call, c.label, c.split, c.model_grade "
                        "FROM latest l JOIN reads r ON r.id = l.read_id LEFT JOIN cases c ON c.image_id = l.image_id "
                        "ORDER BY COALESCE(c.idx, 1e18), r.image_id, r.reader").fetchall()
    return [{**dict(r), "grades": json.loads(r["grades"] or "{}")} for r in rows]
