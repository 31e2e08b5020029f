"""The node's health check and Prometheus metrics over HTTP (`metrics_port`; off by default).

GET /health: 200 and the queue counts while the node serves. GET /metrics: the Prometheus text
format: instances received (stored, skipped, refused), studies read, sent and failed by this process,
the queue by state, and the latency (last instance -> results accepted) of this process's studies.
The stdlib's HTTP server in a daemon thread, bound to the node's host: nothing here needs a
framework, and nothing in it names a patient or a study."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Counters:
    """What this process did, updated by the loop (one thread) and read by the HTTP thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.read = self.sent = self.failed = 0
        self.latency_sum, self.latency_count = 0.0, 0

    def add(self, **values) -> None:
        with self.lock:
            for key, value in values.items():
                setattr(self, key, getattr(self, key) + value)


def render(counters: Counters, received: dict, queue_counts: dict) -> str:
    lines = ["# HELP vfa_node_instances_total DICOM instances received, by outcome",
             "# TYPE vfa_node_instances_total counter"]
    lines += [f'vfa_node_instances_total{{outcome="{k}"}} {v}' for k, v in received.items()]
    with counters.lock:
        for name, value, what in (("read", counters.read, "studies read"), ("sent", counters.sent, "studies sent"),
                                  ("failed", counters.failed, "failed reads or sends (each retry counts)")):
            lines += [f"# HELP vfa_node_studies_{name}_total {what} by this process",
                      f"# TYPE vfa_node_studies_{name}_total counter", f"vfa_node_studies_{name}_total {value}"]
        lines += ["# HELP vfa_node_latency_seconds last instance -> results accepted by every destination",
                  "# TYPE vfa_node_latency_seconds summary",
                  f"vfa_node_latency_seconds_sum {counters.latency_sum:.3f}",
                  f"vfa_node_latency_seconds_count {counters.latency_count}"]
    lines += ["# HELP vfa_node_queue_studies studies in the queue by state", "# TYPE vfa_node_queue_studies gauge"]
    lines += [f'vfa_node_queue_studies{{state="{k}"}} {v}' for k, v in queue_counts.items()]
    return "\n".join(lines) + "\n"


def start(host: str, port: int, counters: Counters, received: dict, queue) -> ThreadingHTTPServer:
    """Serve /health and /metrics on host:port in a daemon thread; the server (call shutdown())."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path == "/health":
                body, kind = json.dumps({"status": "ok", "queue": queue.counts()}), "application/json"
            elif self.path == "/metrics":
                body, kind = render(counters, received, queue.counts()), "text/plain; version=0.0.4"
            else:
                self.send_error(404)
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # scrapes every few seconds: not worth a log line each
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="vfa-node-metrics").start()
    return server
