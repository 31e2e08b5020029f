"""A live `vfa review` under concurrent readers: no error, no lost or duplicated read (correctness
only; the timed figures are benchmarks/review_load.py's), and a SIGKILL loses nothing acknowledged."""
import json
import signal
import sqlite3
import threading
import time
import urllib.request

import pytest

from tests.app.support import free_port, start_server, write_review_set
from tests.app.loadtest import Client, check_db, make_readers, run_load


@pytest.fixture
def data(tmp_path):
    return write_review_set(tmp_path / "set", n=30, vertebrae=False)


def test_concurrent_readers_lose_and_duplicate_nothing(data, tmp_path):
    db, port = tmp_path / "review.sqlite", free_port()
    secrets = make_readers(db, 12)
    proc = start_server(data, db, port)
    try:
        result = run_load("127.0.0.1", port, 30, secrets, clients=12, seconds=3)
    finally:
        proc.terminate()
        proc.wait(30)
    assert result["errors"] == []
    assert len(result["acked"]) == len(result["sent"]) > 12
    check = check_db(db, result["acked"])
    assert check == {"stored": len(result["acked"]), "missing": [], "n_missing": 0, "duplicates": 0, "gaps": 0}


def test_sigkill_mid_load_loses_no_acknowledged_read(data, tmp_path):
    db, port = tmp_path / "review.sqlite", free_port()
    secrets = make_readers(db, 8)
    proc = start_server(data, db, port)
    stop, box = threading.Event(), {}
    load = threading.Thread(target=lambda: box.update(run_load("127.0.0.1", port, 30, secrets, clients=8, seconds=60,
                                                               stop=stop)))
    load.start()
    time.sleep(2.5)
    proc.send_signal(signal.SIGKILL)  # mid-load: reads in flight, some acknowledged, some not
    proc.wait(30)
    stop.set()
    load.join(60)
    acked = box["acked"]
    assert len(acked) > 8
    proc = start_server(data, db, port)  # restart on the same database
    try:
        check = check_db(db, acked)
        assert check["n_missing"] == 0 and check["duplicates"] == 0 and check["gaps"] == 0
        assert check["stored"] <= len(box["sent"])  # at most the in-flight ones besides
        c = Client("127.0.0.1", port)
        c.login("load000", secrets["load000"])  # client 0's reader again: its reads, through the restarted server
        mine = [r for r in acked if r.startswith("c0-")]
        conn = sqlite3.connect(db)
        images = {r[0] for r in conn.execute(f"SELECT image_id FROM reads WHERE request_id IN "
                                             f"({','.join('?' * len(mine))})", mine)}
        conn.close()
        rows = json.loads(c.request("GET", "/api/worklist?status=read&per_page=500")[1])["rows"]
        assert mine and images <= {r["image_id"] for r in rows}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert json.loads(r.read())["ok"]
    finally:
        proc.terminate()
        proc.wait(30)
