"""Readers as accounts, their sessions and their blinded case codes (SQLite, stdlib only).

A reader is added by whoever holds the database (`vfa review readers add NAME`): a random secret is
shown once and only its scrypt hash is kept. Whether a reader's sessions are blinded is the
reader's record, set by that administrator, never a choice at login. A session ends at logout, after
`IDLE` seconds without a request, `ABSOLUTE` seconds after login, or when its reader is revoked.

A blinded reader sees cases under codes 1..N in an order shuffled for that reader (the seed is
recorded in the audit trail), so neither a file name nor the list order (class folders sort
normal before fractured) can reveal a label.
"""
from __future__ import annotations

import hashlib
import hmac
import random
import re
import secrets
import time

from vfa.app.cases import ReviewError

READER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.@-]{0,39}$")
ROLES = ("reader", "admin")
IDLE = 2 * 3600          # a reading session survives a long pause, not a forgotten open browser overnight
ABSOLUTE = 12 * 3600     # one working day
TOUCH = 60               # last_seen is written at most once a minute per session
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1, "dklen": 32}  # RFC 7914's interactive-login parameters

SCHEMA = """
CREATE TABLE IF NOT EXISTS readers(name TEXT PRIMARY KEY, role TEXT NOT NULL, blinded INTEGER NOT NULL,
    salt BLOB NOT NULL, secret_hash BLOB NOT NULL, created_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS sessions(sid TEXT PRIMARY KEY, reader TEXT NOT NULL, blinded INTEGER NOT NULL,
    csrf TEXT NOT NULL, created REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS codes(reader TEXT NOT NULL, code INTEGER NOT NULL, image_id TEXT NOT NULL,
    PRIMARY KEY(reader, code), UNIQUE(reader, image_id));
"""


def migrate(conn) -> None:
    """Sessions of a database written before accounts (no expiry columns) are dropped: they were
    bound to self-asserted names."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(sessions)")}
    if cols and "last_seen" not in cols:
        conn.execute("DROP TABLE sessions")
    conn.executescript(SCHEMA)


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)


def check_name(name: str) -> str:
    if not READER.match(name or ""):
        raise ReviewError(f"reader name {name!r}: 1-40 letters, digits, space, _ . @ -, starting with a letter "
                          "or digit")
    return name


def add_reader(conn, name: str, role: str = "reader", blinded: bool = False) -> str:
    """A new reader; returns the secret (shown once: only its hash is stored)."""
    from vfa.app import audit

    check_name(name)
    if role not in ROLES:
        raise ReviewError(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    if conn.execute("SELECT 1 FROM readers WHERE name=?", (name,)).fetchone():
        raise ReviewError(f"reader {name!r} exists (a new secret: vfa review readers reset {name})")
    secret, salt = secrets.token_urlsafe(18), secrets.token_bytes(16)
    with audit.transaction(conn):
        conn.execute("INSERT INTO readers VALUES (?,?,?,?,?,?,0)",
                     (name, role, int(blinded), salt, _hash(secret, salt), time.time()))
        audit.record(conn, "reader added", "admin", "local", {"reader": name, "role": role, "blinded": blinded})
    return secret


def change_reader(conn, name: str, blinded: bool | None = None, reset: bool = False, revoke: bool = False) -> str:
    """Set a reader's blinding, issue a new secret (returned) or revoke the account; each ends the
    reader's sessions, so the change holds from the next request."""
    from vfa.app import audit

    row = conn.execute("SELECT * FROM readers WHERE name=?", (name,)).fetchone()
    if row is None:
        raise ReviewError(f"no reader {name!r} (vfa review readers list)")
    secret = ""
    with audit.transaction(conn):
        if blinded is not None:
            conn.execute("UPDATE readers SET blinded=? WHERE name=?", (int(blinded), name))
        if reset:
            secret, salt = secrets.token_urlsafe(18), secrets.token_bytes(16)
            conn.execute("UPDATE readers SET salt=?, secret_hash=?, revoked=0 WHERE name=?",
                         (salt, _hash(secret, salt), name))
        if revoke:
            conn.execute("UPDATE readers SET revoked=1 WHERE name=?", (name,))
        conn.execute("DELETE FROM sessions WHERE reader=?", (name,))
        audit.record(conn, "reader changed", "admin", "local",
                     {"reader": name, "blinded": blinded, "new_secret": reset, "revoked": revoke})
    return secret


def list_readers(conn) -> list[dict]:
    return [dict(r) for r in conn.execute("SELECT name, role, blinded, revoked, created_at FROM readers ORDER BY name")]


def check_login(conn, name: str, secret: str) -> dict | None:
    """The reader's record when `secret` is theirs and the account is not revoked, else None (the
    same work either way, so timing does not tell which names exist)."""
    row = conn.execute("SELECT * FROM readers WHERE name=?", (name,)).fetchone()
    salt, stored = (row["salt"], row["secret_hash"]) if row else (b"\0" * 16, b"\0" * 32)
    ok = hmac.compare_digest(_hash(secret or "", salt), stored)
    return dict(row) if row and ok and not row["revoked"] else None


def new_session(conn, sid: str, reader: str, blinded: bool, csrf: str) -> None:
    t = time.time()
    conn.execute("INSERT INTO sessions VALUES (?,?,?,?,?,?)", (sid, reader, int(blinded), csrf, t, t))


def get_session(conn, sid: str | None) -> dict | None:
    """The live session `sid`, or None (an expired one is deleted)."""
    if not sid:
        return None
    row = conn.execute("SELECT * FROM sessions WHERE sid=?", (sid,)).fetchone()
    if row is None:
        return None
    t = time.time()
    if t - row["last_seen"] > IDLE or t - row["created"] > ABSOLUTE:
        conn.execute("DELETE FROM sessions WHERE sid=?", (sid,))
        return None
    if t - row["last_seen"] > TOUCH:
        conn.execute("UPDATE sessions SET last_seen=? WHERE sid=?", (t, sid))
    return dict(row)


def ensure_codes(conn, reader: str) -> None:
    """Codes for every listed case the reader has none for, after the existing ones, in an order
    shuffled with a fresh seed that the audit trail records."""
    from vfa.app import audit

    with audit.transaction(conn):
        missing = [r[0] for r in conn.execute(
            "SELECT image_id FROM cases WHERE image_id NOT IN (SELECT image_id FROM codes WHERE reader=?) "
            "ORDER BY idx", (reader,))]
        if not missing:
            return
        seed = secrets.randbits(63)
        random.Random(seed).shuffle(missing)
        start = conn.execute("SELECT COALESCE(MAX(code), 0) FROM codes WHERE reader=?", (reader,)).fetchone()[0]
        conn.executemany("INSERT INTO codes VALUES (?,?,?)",
                         [(reader, start + i + 1, image_id) for i, image_id in enumerate(missing)])
        audit.record(conn, "blinded order", reader, "server", {"seed": seed, "cases": len(missing), "first": start + 1})


def case_of_code(conn, reader: str, code: int) -> int | None:
    row = conn.execute("SELECT c.idx FROM codes k JOIN cases c ON c.image_id = k.image_id "
                       "WHERE k.reader=? AND k.code=?", (reader, code)).fetchone()
    return row[0] if row else None


def code_of_case(conn, reader: str, idx: int) -> int | None:
    row = conn.execute("SELECT k.code FROM codes k JOIN cases c ON c.image_id = k.image_id "
                       "WHERE k.reader=? AND c.idx=?", (reader, idx)).fetchone()
    return row[0] if row else None
