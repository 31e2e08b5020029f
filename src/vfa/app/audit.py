"""The audit trail: every login (and failed one), read, amendment, account change and export, with
reader, time and client, in a hash chain.

Entry k stores hash_k = SHA-256(hash_{k-1} + canonical JSON of [time, reader, client, action,
detail]); a read's entry holds the read itself. `verify` recomputes the chain and compares every
stored read with its entry, so a later edit, insertion or deletion in either table (by anyone
writing the SQLite file directly) is found and named. `vfa review export --audit FILE` writes the
chain, which a study monitor can recompute without vfa (docs/review.md).
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from datetime import datetime, timezone

GENESIS = "0" * 64
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit(id INTEGER PRIMARY KEY, at TEXT NOT NULL, reader TEXT NOT NULL,
    client TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL);
"""
READ_KEYS = ("id", "image_id", "reader", "version", "fracture", "grade", "grades", "shape", "confidence", "note",
             "blinded", "created_at")
FIELDS = ("id", "at", "reader", "client", "action", "detail", "prev", "hash")


@contextmanager
def transaction(conn):
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); inside an open transaction, just that one."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def entry_hash(prev: str, at: str, reader: str, client: str, action: str, detail: str) -> str:
    canonical = json.dumps([at, reader, client, action, json.loads(detail)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev + canonical).encode()).hexdigest()


def record(conn, action: str, reader: str, client: str, detail: dict) -> str:
    """Append one entry (inside the caller's transaction, which serialises the chain); returns its hash."""
    with transaction(conn):
        row = conn.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        prev = row[0] if row else GENESIS
        at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        text = json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str)
        h = entry_hash(prev, at, reader, client or "", action, text)
        conn.execute("INSERT INTO audit(at, reader, client, action, detail, prev, hash) VALUES (?,?,?,?,?,?,?)",
                     (at, reader, client or "", action, text, prev, h))
    return h


def read_detail(read_row: dict) -> dict:
    """What a read's entry holds: the stored row's fields (grades as stored, JSON text), the image by
    its public name (DICOM UIDs hashed), so the chain can be handed to a monitor as it is."""
    from vfa.io.identifiers import public_path

    return {k: public_path(read_row[k]) if k == "image_id" else read_row[k] for k in READ_KEYS}


def verify(conn) -> tuple[bool, str, int]:
    """(intact, what is wrong or the head hash, entries): the chain, then every read against its entry."""
    prev, n, logged = GENESIS, 0, {}
    for r in conn.execute("SELECT * FROM audit ORDER BY id"):
        n += 1
        recomputed = entry_hash(prev, r["at"], r["reader"], r["client"], r["action"], r["detail"])
        if r["prev"] != prev or recomputed != r["hash"]:
            return False, f"audit entry {r['id']} ({r['action']}, {r['at']}) does not follow from the one before it", n
        prev = r["hash"]
        if r["action"] in ("read", "amendment"):
            detail = json.loads(r["detail"])
            logged[detail["id"]] = (r["id"], detail)
    for read in conn.execute("SELECT * FROM reads ORDER BY id"):
        entry = logged.pop(read["id"], None)
        if entry is None:
            return False, f"read {read['id']} ({read['reader']}, version {read['version']}) has no audit entry", n
        if read_detail(dict(read)) != entry[1]:
            return False, f"read {read['id']} differs from what audit entry {entry[0]} recorded", n
    if logged:
        read_id, (entry_id, _) = next(iter(logged.items()))
        return False, f"read {read_id} of audit entry {entry_id} is missing from the reads table", n
    return True, prev, n
