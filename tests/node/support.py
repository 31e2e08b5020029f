"""`vfa node` under test against real DICOM software: the node as a subprocess (so it can be SIGTERMed
and kill -9ed), Debian's Orthanc with a temporary storage and config, each on a free port on
127.0.0.1. Used by tests/node/conftest.py's fixtures, the tests and bench_node.py."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests import oracles

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120  # seconds for the node to import torch and load the model on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, poll: float = 0.1):
    end = time.time() + timeout
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Proc:
    """A subprocess with its log file; stopped (SIGTERM, then SIGKILL) at teardown."""

    def __init__(self, args, log: Path, env=None):
        self.args, self.log = args, log
        self.out = open(log, "ab")
        self.p = subprocess.Popen(args, stdout=self.out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self.out.close()
        return self.p.returncode


class Node:
    """`vfa node` as a subprocess on a free port, restartable over the same store."""

    def __init__(self, tmp: Path, ckpt, send_to: str, quiet_time: float = 1.0, allow: str | None = None,
                 settings: dict | None = None, port: int | None = None):
        self.port, self.store, self.tmp = port or free_port(), tmp / "store", tmp
        self.args = [sys.executable, "-m", "vfa.cli", "node", "--model", str(ckpt), "--aet", "VFA",
                     "--port", str(self.port), "--send-to", send_to, "--store", str(self.store),
                     "--quiet-time", str(quiet_time), "--device", "cpu"] + (["--allow", allow] if allow else [])
        if settings:  # the rest through a config file, as a site would write it
            (tmp / "node.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
            self.args += ["--config", str(tmp / "node.yaml")]
        self.runs = 0
        self.proc: Proc | None = None

    def start(self) -> Node:
        self.runs += 1
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        self.proc = Proc(self.args, self.tmp / f"node-{self.runs}.log", env)
        wait_for(lambda: "listening as" in self.proc.text() or self.proc.p.poll() is not None, START_TIMEOUT,
                 "the node to listen")
        assert self.proc.p.poll() is None, self.proc.text()
        return self

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("node-*.log")))

    def stop(self, sig=signal.SIGTERM) -> int:
        return self.proc.stop(sig) if self.proc else 0

    def states(self) -> dict:
        import sqlite3

        with sqlite3.connect(self.store / "queue.sqlite", timeout=30) as db:
            return dict(db.execute("SELECT study_uid, state FROM studies").fetchall())


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Orthanc:
    """Debian's Orthanc with a temporary storage and a config naming the node as modality `vfa`."""

    def __init__(self, tmp: Path, node_port: int, dicom_port: int | None = None):
        self.dicom_port, self.http_port = dicom_port or free_port(), free_port()
        config = {"Name": "vfa-test", "StorageDirectory": str(tmp / "orthanc-db"),
                  "IndexDirectory": str(tmp / "orthanc-db"), "DicomAet": "ORTHANC",
                  "DicomPort": self.dicom_port, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "DicomServerEnabled": True, "HttpServerEnabled": True,
                  "Plugins": [], "DicomModalities": {"vfa": ["VFA", "127.0.0.1", node_port]},
                  "DicomScuTimeout": 30, "StableAge": 2}
        path = tmp / "orthanc.json"
        path.write_text(json.dumps(config))
        self.proc = Proc([oracles.orthanc(), str(path)], tmp / "orthanc.log")
        wait_for(lambda: self._up(), 60, "Orthanc's REST API")

    @property
    def aet(self) -> str:
        return f"ORTHANC@127.0.0.1:{self.dicom_port}"

    def _up(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def request(self, method: str, path: str, data: bytes | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=60) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, data):
        return self.request("POST", path, data if isinstance(data, bytes) else json.dumps(data).encode())

    def sop_classes(self) -> list[tuple[str, str]]:
        """(SOPClassUID, SOPInstanceUID) of every instance stored."""
        out = []
        for iid in self.get("/instances"):
            tags = self.get(f"/instances/{iid}/simplified-tags")
            out.append((tags["SOPClassUID"], tags["SOPInstanceUID"]))
        return out

    def stop(self) -> None:
        self.proc.stop()
