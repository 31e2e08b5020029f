"""`vfa review`: load the predictions into the review database, then serve the worklist."""
from __future__ import annotations

from pathlib import Path

from vfa.app.cases import ReviewError, load_cases
from vfa.app.db import open_db, store_cases
from vfa.app.security import is_loopback, new_token


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


def serve(predictions, db, images=None, heatmaps=None, vertebrae=None, host: str = "127.0.0.1", port: int = 8000,
          reader: str = "", token: str | None = None, blind: bool = False, keep_identifiers: bool = False,
          threshold=None, score=None, dry_run: bool = False, log=print) -> dict:
    """Serve the review app until interrupted. Off loopback a token is required (generated and
    printed if not given); `dry_run` checks and loads the inputs, then returns without serving."""
    from vfa.app.server import Settings, create_app

    meta = prepare(predictions, db, images, heatmaps, vertebrae, threshold, score, keep_identifiers)
    log(f"vfa review: {meta['n']} cases ({meta['heatmaps']} with a heatmap, {meta['with_vertebrae']} with vertebrae), "
        f"P = {meta['score']}, threshold {meta['threshold']:.4g}; {meta['reads']} reads in {db}")
    if dry_run:
        return meta
    loopback = is_loopback(host)
    if not loopback and not token:
        token = new_token()
    hosts = {"127.0.0.1", "localhost", "::1"} if loopback else None
    settings = Settings(token=token, hosts=hosts, cookie=f"vfa{port}", reader=reader or "", blind=blind,
                        keep_identifiers=keep_identifiers)
    _check_port(host, port)
    app = create_app(db, settings)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    log(f"vfa review: open {url}  (Ctrl-C stops; every acknowledged read is already on disk)")
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning",
                            timeout_keep_alive=30, h11_max_incomplete_event_size=16 * 1024)
    uvicorn.Server(config).run()
    return meta
