"""A bounded load test of a running `vfa review` server (stdlib only: threads and http.client).

Each client logs in as its own reader, then until the deadline opens a random case (the page and
its image) and posts a read with a unique request_id. `check_db` then compares the database with
what the clients saw acknowledged: nothing acknowledged may be missing, nothing stored twice,
each (image, reader)'s versions 1..k without a gap. Used by benchmarks/review_load.py (figures),
tests/app/test_load.py (correctness only) and docs/make_review_screenshots.py (`start_review`,
`Client`); it is a test and benchmark tool, not part of the vfa package."""
from __future__ import annotations

import http.client
import json
import os
import random
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from http.cookies import SimpleCookie
from urllib.parse import urlencode


class Client:
    def __init__(self, host: str, port: int, timeout: float = 60):
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        h = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()), **(headers or {})}
        try:
            self.conn.request(method, path, body=body, headers=h)
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # reconnect on the next request
            raise
        for value in resp.headers.get_all("Set-Cookie") or []:
            for k, morsel in SimpleCookie(value).items():
                self.cookies[k] = morsel.value
        return resp.status, data

    def login(self, reader: str, secret: str) -> str:
        _, page = self.request("GET", "/login")
        csrf = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()
        form = {"reader": reader, "secret": secret, "csrf": csrf}
        status, _ = self.request("POST", "/login", urlencode(form).encode(),
                                 {"Content-Type": "application/x-www-form-urlencoded"})
        if status != 303:
            raise RuntimeError(f"login failed: HTTP {status}")
        return json.loads(self.request("GET", "/api/me")[1])["csrf"]


def make_readers(db, n: int) -> dict[str, str]:
    """Accounts load000 .. for `n` clients in `db` (created if missing): {name: secret}."""
    from vfa.app import accounts
    from vfa.app.db import open_db

    conn = open_db(db)
    try:
        return {f"load{k:03d}": accounts.add_reader(conn, f"load{k:03d}") for k in range(n)}
    finally:
        conn.close()


def _client(host, port, k, n_cases, deadline, out, lock, seed, stop, secrets):
    rng = random.Random(seed * 1000 + k)
    stats = {"latency": [], "errors": [], "acked": [], "sent": []}
    try:
        c = Client(host, port)
        csrf = c.login(f"load{k:03d}", secrets[f"load{k:03d}"])
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the figure counts it
        stats["errors"].append(f"login: {type(exc).__name__}: {exc}")
        deadline = 0
    i = 0
    while time.monotonic() < deadline and not stop.is_set():
        idx = rng.randint(1, n_cases)
        rid = f"c{k}-{i}"
        read = {"idx": idx, "fracture": rng.randint(0, 1), "grade": rng.randint(0, 3), "request_id": rid,
                "confidence": rng.randint(1, 5), "note": "load test"}
        for method, path, body in (("GET", f"/case/{idx}", None), ("GET", f"/image/{idx}", None),
                                   ("POST", "/api/reads", json.dumps(read).encode())):
            t0 = time.perf_counter()
            if method == "POST":
                stats["sent"].append(rid)
            try:
                status, data = c.request(method, path, body, {"Content-Type": "application/json",
                                                              "X-CSRF-Token": csrf} if body else None)
            except Exception as exc:  # noqa: BLE001
                stats["errors"].append(f"{method} {path}: {type(exc).__name__}")
                continue
            stats["latency"].append((method, time.perf_counter() - t0))
            if status != 200:
                stats["errors"].append(f"{method} {path}: HTTP {status}")
            elif method == "POST" and json.loads(data).get("ok"):
                stats["acked"].append(rid)
        i += 1
    with lock:
        out.append(stats)


def run_load(host: str, port: int, n_cases: int, secrets: dict[str, str], clients: int = 50, seconds: float = 30.0,
             seed: int = 0, stop: threading.Event | None = None) -> dict:
    """`clients` concurrent readers (accounts from `make_readers`) for `seconds`; returns requests, errors,
    acknowledged request_ids and latency percentiles (ms). `stop` ends it early (the kill test)."""
    out, lock, stop = [], threading.Lock(), stop or threading.Event()
    deadline = time.monotonic() + seconds
    t0 = time.monotonic()
    threads = [threading.Thread(target=_client, args=(host, port, k, n_cases, deadline, out, lock, seed, stop, secrets),
                                daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    lat = sorted(x for s in out for _, x in s["latency"])
    posts = sorted(x for s in out for m, x in s["latency"] if m == "POST")

    def pct(values, q):
        return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 1) if values else None

    return {"clients": clients, "seconds": round(wall, 1), "requests": len(lat),
            "requests_per_s": round(len(lat) / wall, 1) if wall else None,
            "errors": [e for s in out for e in s["errors"]], "acked": [r for s in out for r in s["acked"]],
            "sent": [r for s in out for r in s["sent"]],
            "p50_ms": pct(lat, .5), "p95_ms": pct(lat, .95), "p99_ms": pct(lat, .99),
            "post_p95_ms": pct(posts, .95)}


def check_db(db, acked) -> dict:
    """The stored reads against the acknowledged ones: {"stored", "missing", "duplicates", "gaps"}."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        ids = [r[0] for r in conn.execute("SELECT request_id FROM reads WHERE request_id LIKE 'c%'")]
        versions = conn.execute("SELECT image_id, reader, COUNT(*), MAX(version) FROM reads GROUP BY image_id, reader "
                                "HAVING COUNT(*) != MAX(version)").fetchall()
    finally:
        conn.close()
    stored = set(ids)
    return {"stored": len(ids), "missing": sorted(set(acked) - stored)[:10], "n_missing": len(set(acked) - stored),
            "duplicates": len(ids) - len(stored), "gaps": len(versions)}


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_review(args: list[str], port: int | None = None, timeout: float = 60.0,
                 output: bool = True) -> tuple[subprocess.Popen, int]:
    """`vfa review ARGS --port PORT` in a child process on loopback (a free port unless given);
    returns (the process, its port) once it answers /healthz. `output`: keep its stdout/stderr in
    a pipe (read it when it fails) instead of discarding them."""
    port = port or free_port()
    pipe = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) if output else \
        dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen([sys.executable, "-m", "vfa.cli", "review", *map(str, args), "--port", str(port)],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, **pipe)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vfa review exited: {proc.stdout.read() if output else proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if json.loads(r.read())["ok"]:
                    return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"vfa review did not start within {timeout:.0f} s")
