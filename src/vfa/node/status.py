"""`vfa node status` and `vfa node resend`: the queue read and nudged from outside the running node
(SQLite in WAL mode lets both happen while it serves). Studies are named by hashed UID only."""
from __future__ import annotations

from pathlib import Path

from vfa.errors import ConfigError
from vfa.node.queue import DB_NAME, Queue, study_id


def _open(store) -> Queue:
    if not (Path(store) / DB_NAME).is_file():
        raise FileNotFoundError(f"{store}: no node queue here ({DB_NAME}); give the --store of a vfa node")
    return Queue(store)


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def status(store) -> dict:
    """Queue counts by state, instances stored and skipped (with the reasons), the latest errors,
    and the latency of sent studies (last instance -> results accepted, seconds)."""
    queue = _open(store)
    lat = queue.latencies()
    return {"studies": queue.counts(), "retrying": queue.retrying(), "instances": queue.instance_counts(),
            "skip_reasons": queue.skip_reasons(), "errors": queue.errors(),
            "latency_s": {"n": len(lat), "p50": _percentile(lat, 50), "p95": _percentile(lat, 95)}}


def format_status(s: dict) -> str:
    lines = ["studies: " + ", ".join(f"{k} {v}" for k, v in s["studies"].items())
             + (f" ({s['retrying']} failed, waiting to retry)" if s["retrying"] else ""),
             "instances: " + (", ".join(f"{k} {v}" for k, v in s["instances"].items()) or "none")]
    lat = s["latency_s"]
    if lat["n"]:
        lines.append(f"latency (last instance -> results sent): p50 {lat['p50']:.2f} s, p95 {lat['p95']:.2f} s "
                     f"over {lat['n']} studies")
    for r in s["skip_reasons"]:
        lines.append(f"skipped {r['instances']} instance(s): {r['reason']}")
    for e in s["errors"]:
        lines.append(f"error {e['study']} ({e['state']}, {e['attempts']} attempt(s)): {e['error']}")
    return "\n".join(lines)


def resend(store, study: str) -> str:
    """Send a study's results again (read it again if they are gone); returns a line saying what happens."""
    queue = _open(store)
    try:
        state = queue.resend(study.strip())
    except KeyError:
        raise ConfigError(f"no study {study!r} in {store} (give its StudyInstanceUID or the uid-... id "
                          "`vfa node status` prints)") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    row = queue.find(study.strip())
    what = "sent again" if state == "read" else "read and sent again"
    return f"study {study_id(row['study_uid'])} will be {what} by the running node (state {state})"
