"""`vfa review`: load the predictions into the review database, then serve the worklist."""
from __future__ import annotations

from pathlib import Path

import os

from vfa.app import accounts
from vfa.app.cases import ReviewError, load_cases
from vfa.app.db import open_db, store_cases
from vfa.app.security import is_loopback


def prepare(predictions, db, images=None, heatmaps=None, vertebrae=None, threshold=None, score=None,
            keep_identifiers: bool = False) -> dict:
    """Check the inputs and (re)load the worklist into `db` (its reads kept); returns the settings found."""
    db = Path(db)
    if db.exists() and db.is_dir():
        raise ReviewError(f"--db {db} is a folder; give a file, e.g. {db / 'review.sqlite'}")
    if db.resolve() == Path(predictions).resolve():
        raise ReviewError(f"--db {db} is the predictions file")
    cases, meta = load_cases(predictions, images, heatmaps, vertebrae, threshold, score, keep_identifiers)
    conn = open_db(db)
    try:
        store_cases(conn, cases, meta)
        for (reader,) in conn.execute("SELECT DISTINCT reader FROM codes").fetchall():
            accounts.ensure_codes(conn, reader)  # cases new to the list get codes too
        n_reads = conn.execute("SELECT COUNT(*) FROM reads").fetchone()[0]
    finally:
        conn.close()
    return {**meta, "reads": n_reads}


def _check_port(host: str, port: int) -> None:
    """A port in use (or an address not on this machine) is one line before anything starts."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(infos[0][4])
    except OSError as exc:
        raise ReviewError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


def first_reader(db, name: str = "", blind: bool = False, log=print) -> None:
    """Single-user start: a database without readers gets one account (admin; blinded under --blind)
    whose secret goes to DB.secret, readable by its owner only, never to the console or argv."""
    conn = open_db(db)
    try:
        if accounts.list_readers(conn):
            return
        name = name or "reader"
        secret = accounts.add_reader(conn, name, "admin", blinded=blind)
    finally:
        conn.close()
    path = f"{db}.secret"
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.replace(path + ".tmp", path)
    log(f"vfa review: reader '{name}' created; the secret to log in with is in {path} (readable by you only). "
        "More readers: vfa review readers add NAME --db ...")


def _transport(host: str, certfile, keyfile, insecure_http: bool) -> bool:
    """True for TLS. Off loopback, plain HTTP would carry secrets and reads in clear: refused unless
    --insecure-http says the network is trusted."""
    if bool(certfile) != bool(keyfile):
        raise ReviewError("TLS needs both --certfile and --keyfile")
    for f in (certfile, keyfile):
        if f and not os.path.isfile(f):
            raise ReviewError(f"TLS file not found: {f}")
    if not certfile and not is_loopback(host) and not insecure_http:
        raise ReviewError(f"serving on {host} without TLS would send readers' secrets, sessions and reads in clear "
                          "text: pass --certfile and --keyfile (docs/review.md), or --insecure-http on a network "
                          "you trust")
    return bool(certfile)


def serve(predictions, db, images=None, heatmaps=None, vertebrae=None, host: str = "127.0.0.1", port: int = 8000,
          reader: str = "", blind: bool = False, keep_identifiers: bool = False, threshold=None, score=None,
          dry_run: bool = False, certfile=None, keyfile=None, insecure_http: bool = False, log=print) -> dict:
    """Serve the review app until interrupted: TLS with `certfile`/`keyfile`, plain HTTP on loopback
    or with `insecure_http`; `dry_run` checks and loads the inputs, then returns without serving."""
    from vfa.app.server import Settings, create_app

    secure = _transport(host, certfile, keyfile, insecure_http)
    meta = prepare(predictions, db, images, heatmaps, vertebrae, threshold, score, keep_identifiers)
    log(f"vfa review: {meta['n']} cases ({meta['heatmaps']} with a heatmap, {meta['with_vertebrae']} with vertebrae), "
        f"P = {meta['score']}, threshold {meta['threshold']:.4g}; {meta['reads']} reads in {db}")
    if dry_run:
        return meta
    first_reader(db, reader, blind, log)
    hosts = {"127.0.0.1", "localhost", "::1"} if is_loopback(host) else None
    settings = Settings(hosts=hosts, cookie=f"vfa{port}", reader=reader or "", blind=blind,
                        keep_identifiers=keep_identifiers, secure=secure)
    _check_port(host, port)
    app = create_app(db, settings)
    shown = f"[{host}]" if ":" in host else host
    log(f"vfa review: open {'https' if secure else 'http'}://{shown}:{port}/  (Ctrl-C stops; every acknowledged "
        "read is already on disk)")
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning", ssl_certfile=certfile,
                            ssl_keyfile=keyfile, timeout_keep_alive=30, h11_max_incomplete_event_size=16 * 1024)
    uvicorn.Server(config).run()
    return meta


READER_ACTIONS = ("add", "list", "set", "reset", "revoke")


def manage_readers(db, action: str, name: str | None = None, role: str = "reader", blinded: bool | None = None,
                   log=print) -> list[dict]:
    """`vfa review readers ACTION [NAME]`: add (prints the new secret once), list, set (blinding),
    reset (a new secret), revoke; returns the readers afterwards."""
    if action not in READER_ACTIONS:
        raise ReviewError(f"vfa review readers: one of {', '.join(READER_ACTIONS)}, got {action!r}")
    if action != "list" and not name:
        raise ReviewError(f"vfa review readers {action} needs a reader NAME")
    if action == "set" and blinded is None:
        raise ReviewError("vfa review readers set NAME needs --blinded yes|no")
    conn = open_db(db, create=action == "add")
    try:
        secret = ""
        if action == "add":
            secret = accounts.add_reader(conn, name, role, bool(blinded))
        elif action != "list":
            secret = accounts.change_reader(conn, name, blinded=blinded, reset=action == "reset",
                                            revoke=action == "revoke")
        rows = accounts.list_readers(conn)
    finally:
        conn.close()
    if secret:  # shown once; only its hash is kept
        log(f"secret of reader '{name}' (shown once; give it to the reader privately): {secret}")
    for r in rows:
        log(f"{r['name']}: {r['role']}, {'blinded' if r['blinded'] else 'not blinded'}"
            + (", revoked" if r["revoked"] else ""))
    return rows


def verify_db(db, log=print) -> bool:
    """`vfa review verify`: whether the audit chain and the reads still match (a study monitor's check)."""
    from vfa.app import audit

    conn = open_db(db, create=False)
    try:
        intact, why, entries = audit.verify(conn)
    finally:
        conn.close()
    log(f"{db}: audit trail intact, {entries} entries, head {why}" if intact else
        f"{db}: audit trail BROKEN ({entries} entries): {why}")
    return intact
