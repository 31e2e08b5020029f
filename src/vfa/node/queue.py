"""The node's durable queue: one SQLite file (WAL, synchronous=FULL) in the store.

A study moves received -> complete -> read -> sent; `skipped` when none of its instances is a VFA
image, `dead` after `max_attempts` failed reads or sends (each failure keeps its error and waits a
doubling back-off). Every change is committed before the node acts on it: an instance is in the
table before its C-STORE is answered, a study is `read` only once its results are on disk, `sent`
only once every destination accepted them. So after a kill -9 the queue says what is left to do,
and redoing it is harmless (the results' UIDs are fixed by the source, vfa.node.results).

A study's `version` counts its instances' arrivals: a read or send that started before a new
instance came in does not move the study on (it is read again, whole, after the next quiet time)."""
from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

DB_NAME = "queue.sqlite"
STATES = ("received", "complete", "read", "sent", "skipped", "dead")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, path TEXT, sop_class TEXT,
    status TEXT NOT NULL, reason TEXT, caller TEXT, received_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY, state TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 1,
    first_at REAL NOT NULL, last_instance_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0, last_error TEXT, read_at REAL, sent_at REAL, results TEXT,
    updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state, next_at);
"""


def study_id(uid: str) -> str:
    """A study or instance as logs and `vfa node status` name it: its UID hashed as
    vfa.io.identifiers.public_path hashes UIDs in file names (uid- and 16 hex digits of its SHA-256)."""
    import hashlib

    return "uid-" + hashlib.sha256(str(uid).encode()).hexdigest()[:16]


class Queue:
    """The queue in `store`/queue.sqlite. Each call opens its own connection: the C-STORE handlers
    run in pynetdicom's threads, the reader and sender in the main thread."""

    def __init__(self, store):
        self.store = Path(store)
        self.path = self.store / DB_NAME
        self.store.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=FULL")  # committed means on disk: the C-STORE answer depends on it
        return db

    def _write(self, sql_and_args: list[tuple]) -> list[int]:
        """Run the statements in one IMMEDIATE transaction; each one's rowcount."""
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                counts = [db.execute(sql, args).rowcount for sql, args in sql_and_args]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return counts

    def _read(self, sql: str, args=()) -> list[sqlite3.Row]:
        with closing(self._connect()) as db:
            return db.execute(sql, args).fetchall()

    def record(self, study_uid: str, sop_uid: str, path: str | None, sop_class: str, reason: str | None,
               caller: str, now: float | None = None) -> None:
        """One received instance (stored at `path`, or skipped for `reason`) and its study. A stored
        image sends the study back to `received` whatever state it was in: it is read again, whole,
        once quiet. A skipped one leaves a known study as it is: the PACS routing the node's own SR
        back to it must not start the study over (and send the SR again, and again)."""
        now = time.time() if now is None else now
        status = "skipped" if reason else "stored"
        again = "NOTHING" if reason else ("UPDATE SET state='received', version=version+1, attempts=0, next_at=0, "
                                          "last_instance_at=excluded.last_instance_at, updated_at=excluded.updated_at")
        self._write([
            ("INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
             (sop_uid, study_uid, path, sop_class, status, reason, caller, now)),
            ("INSERT INTO studies (study_uid, state, first_at, last_instance_at, updated_at) "
             f"VALUES (?, 'received', ?, ?, ?) ON CONFLICT(study_uid) DO {again}", (study_uid, now, now, now))])

    def promote(self, quiet_time: float, now: float | None = None) -> None:
        """Studies quiet for `quiet_time` seconds: `complete`, or `skipped` when no instance is VFA."""
        now = time.time() if now is None else now
        has_image = "EXISTS (SELECT 1 FROM instances i WHERE i.study_uid=studies.study_uid AND i.status='stored')"
        self._write([
            (f"UPDATE studies SET state='complete', updated_at=? WHERE state='received' AND "
             f"last_instance_at<=? AND {has_image}", (now, now - quiet_time)),
            (f"UPDATE studies SET state='skipped', updated_at=? WHERE state='received' AND "
             f"last_instance_at<=? AND NOT {has_image}", (now, now - quiet_time))])

    def due(self, state: str, now: float | None = None, limit: int = 1) -> list[sqlite3.Row]:
        """The oldest studies (at most `limit`) in `state` whose back-off has passed."""
        now = time.time() if now is None else now
        return self._read("SELECT * FROM studies WHERE state=? AND next_at<=? ORDER BY last_instance_at LIMIT ?",
                          (state, now, limit))

    def advance(self, study: sqlite3.Row, state: str, **values) -> bool:
        """`study` to `state` (with `values`: read_at, results, ...), unless an instance arrived since
        it was taken (its version moved on); whether it moved."""
        sets = ", ".join(f"{k}=?" for k in values)
        sql = (f"UPDATE studies SET state=?, next_at=0, last_error=NULL, updated_at=?{', ' + sets if sets else ''} "
               "WHERE study_uid=? AND version=? AND state=?")
        args = (state, time.time(), *values.values(), study["study_uid"], study["version"], study["state"])
        return self._write([(sql, args)])[0] == 1

    def fail(self, study: sqlite3.Row, error: str, max_attempts: int, base: float, cap: float) -> str:
        """A failed read or send: retried after a doubling back-off, or `dead` after max_attempts;
        the state it is in now."""
        attempts = int(study["attempts"]) + 1
        state = "dead" if attempts >= max_attempts else study["state"]
        wait = min(cap, base * 2 ** (attempts - 1))
        self._write([("UPDATE studies SET state=?, attempts=?, last_error=?, next_at=?, updated_at=? "
                      "WHERE study_uid=? AND version=? AND state=?",
                      (state, attempts, error[:500], time.time() + wait, time.time(), study["study_uid"],
                       study["version"], study["state"]))])
        return state

    def images(self, study_uid: str) -> list[str]:
        rows = self._read("SELECT path FROM instances WHERE study_uid=? AND status='stored' ORDER BY received_at",
                          (study_uid,))
        return [r["path"] for r in rows]

    def find(self, study: str) -> sqlite3.Row | None:
        """A study by its UID or by its hashed id (as status prints it)."""
        for row in self._read("SELECT * FROM studies"):
            if study in (row["study_uid"], study_id(row["study_uid"])):
                return row
        return None

    def resend(self, study: str) -> str:
        """`vfa node resend`: the study read again (if its results are gone) or sent again; the state set."""
        row = self.find(study)
        if row is None:
            raise KeyError(study)
        results = [p for p in (row["results"] or "").split("\n") if p]
        state = "read" if results and all(Path(p).is_file() for p in results) else "complete"
        if not self.images(row["study_uid"]):
            raise ValueError(f"study {study_id(row['study_uid'])} has no VFA image to read (state {row['state']})")
        self._write([("UPDATE studies SET state=?, attempts=0, next_at=0, last_error=NULL, version=version+1, "
                      "updated_at=? WHERE study_uid=?", (state, time.time(), row["study_uid"]))])
        return state

    def counts(self) -> dict[str, int]:
        got = {r["state"]: r["n"] for r in self._read("SELECT state, COUNT(*) AS n FROM studies GROUP BY state")}
        return {s: int(got.get(s, 0)) for s in STATES}

    def retrying(self) -> int:
        """Studies whose last read or send failed and that wait for their next attempt."""
        rows = self._read("SELECT COUNT(*) AS n FROM studies WHERE last_error IS NOT NULL AND state IN "
                          "('complete', 'read')")
        return int(rows[0]["n"])

    def instance_counts(self) -> dict[str, int]:
        rows = self._read("SELECT status, COUNT(*) AS n FROM instances GROUP BY status")
        return {r["status"]: int(r["n"]) for r in rows}

    def errors(self, limit: int = 10) -> list[dict]:
        """The latest failures (studies with an error) and skip reasons, identifiers hashed."""
        rows = self._read("SELECT study_uid, state, attempts, last_error, updated_at FROM studies "
                          "WHERE last_error IS NOT NULL ORDER BY updated_at DESC LIMIT ?", (limit,))
        return [{"study": study_id(r["study_uid"]), "state": r["state"], "attempts": r["attempts"],
                 "error": r["last_error"], "at": r["updated_at"]} for r in rows]

    def skip_reasons(self, limit: int = 10) -> list[dict]:
        rows = self._read("SELECT reason, COUNT(*) AS n FROM instances WHERE status='skipped' GROUP BY reason "
                          "ORDER BY n DESC LIMIT ?", (limit,))
        return [{"reason": r["reason"], "instances": int(r["n"])} for r in rows]

    def latencies(self) -> list[float]:
        """Seconds from each sent study's last instance to its results accepted by the destinations."""
        rows = self._read("SELECT sent_at - last_instance_at AS s FROM studies WHERE state='sent'")
        return [float(r["s"]) for r in rows if r["s"] is not None]
