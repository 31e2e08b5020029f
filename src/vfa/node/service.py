"""`vfa node`: the long-running loop that ties the receiver, the queue, the warm model and the sender.

The SCP answers in pynetdicom's threads; this (main) thread promotes quiet studies to `complete`,
reads one, sends one, and sleeps when there is nothing to do. SIGTERM or SIGINT lets the study in
hand finish (its read or send), closes the port, and leaves with RunInterrupted (the CLI exits
128 + signal, 143 for SIGTERM); whatever is still queued is taken up by the next start. Logs name
studies and instances only by hashed UIDs (vfa.node.queue.study_id)."""
from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from vfa.errors import RunInterrupted
from vfa.node import metrics, scp
from vfa.node.config import NodeConfig
from vfa.node.queue import Queue, study_id
from vfa.node.reload import ModelWatcher
from vfa.node.results import WarmModel
from vfa.node.sender import send_studies

LOG = logging.getLogger("vfa.node")
BATCH = 16  # complete studies read in one job at most: one scoring pass, then each study's results


def setup_logging() -> None:
    """One line per event on stderr (time, level, message); pynetdicom's own per-message lines off:
    they carry AE titles and UIDs that do not belong in a log."""
    import sys

    from pynetdicom import _config

    _config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if not LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s vfa node: %(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
        LOG.propagate = False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class Node:
    """One node over `cfg`: `run()` serves until a signal; `step()` does one unit of work (tests)."""

    def __init__(self, cfg: NodeConfig, model: WarmModel | None = None):
        self.cfg, self.queue = cfg, Queue(cfg.store)
        self.model = model
        self.stop_signal: int | None = None
        self.counters = metrics.Counters()
        self.in_hand: list[str] = []  # the studies of the last read: SIGTERM lets them be sent before stopping

    def results_dir(self, study_uid: str) -> Path:
        return Path(self.cfg.store) / "results" / study_id(study_uid)

    def step(self) -> bool:
        """Promote quiet studies, then send one study that is read, else read the complete ones (up to
        BATCH at once); whether there was work. Sending first: under a flood, results already made
        go out instead of waiting for every queued study to be read (a destination that is down
        backs off, so it does not hold up the reading)."""
        self.queue.promote(self.cfg.quiet_time)
        done = self.queue.due("read", limit=BATCH)
        if done:
            self.send(done)
            return True
        ready = self.queue.due("complete", limit=BATCH)
        if ready:
            self.read(ready)
            return True
        return False

    def _failed(self, study, what: str, exc: BaseException) -> None:
        cfg = self.cfg
        state = self.queue.fail(study, _one_line(exc), cfg.max_attempts, cfg.retry_base, cfg.retry_max)
        self.counters.add(failed=1)
        tail = "dead-lettered" if state == "dead" else f"retried later (attempt {int(study['attempts']) + 1} " \
                                                        f"of {cfg.max_attempts})"
        LOG.error("%s of study %s failed, %s: %s", what, study_id(study["study_uid"]), tail, _one_line(exc))

    def read(self, ready: list) -> None:
        """Score the ready studies in one job; each one `read` or failed on its own."""
        started = time.time()
        images = {s["study_uid"]: self.queue.images(s["study_uid"]) for s in ready}
        self.in_hand = list(images)
        try:
            done = self.model.read(images, {uid: self.results_dir(uid) for uid in images},
                                   Path(self.cfg.store) / "work")
        except Exception as exc:  # the job as a whole failed: every study in it is retried, then dead-lettered
            done = {uid: exc for uid in images}
        for study in ready:
            outcome = done[study["study_uid"]]
            if isinstance(outcome, Exception):
                self._failed(study, "read", outcome)
                continue
            files, rows = outcome
            moved = self.queue.advance(study, "read", read_at=time.time(), results="\n".join(map(str, files)))
            self.counters.add(read=1)
            LOG.info("read study %s: %d image(s), max P(fracture) %.4f, %d object(s); %d stud%s in %.2f s%s",
                     study_id(study["study_uid"]), len(rows), max(float(r["p_fracture"]) for r in rows), len(files),
                     len(ready), "y" if len(ready) == 1 else "ies", time.time() - started,
                     "" if moved else "; a new instance came meanwhile, it is read again")

    def send(self, done: list) -> None:
        """Send read studies (one association per destination for them all); each `sent` or failed."""
        files = {d["study_uid"]: [Path(p) for p in (d["results"] or "").split("\n") if p] for d in done}
        missing = {uid for uid, fs in files.items() if not fs or not all(f.is_file() for f in fs)}
        try:
            errors = send_studies({uid: fs for uid, fs in files.items() if uid not in missing}, self.cfg.send_to,
                                  self.cfg.aet)
        except Exception as exc:  # unexpected (pynetdicom itself): every study in hand is retried
            errors = dict.fromkeys(set(files) - missing, exc)
        for study in done:
            uid = study["study_uid"]
            if uid in missing:
                self._failed(study, "send", FileNotFoundError("result file(s) missing; `vfa node resend` reads "
                                                              "the study again"))
            elif errors.get(uid) is not None:  # a destination down or refusing: back-off, retry, dead-letter
                self._failed(study, "send", errors[uid])
            else:
                self._sent(study, len(files[uid]))

    def _sent(self, study, n_files: int) -> None:
        now = time.time()
        if self.queue.advance(study, "sent", sent_at=now):
            self.counters.add(sent=1, latency_sum=now - float(study["last_instance_at"]), latency_count=1)
            LOG.info("sent study %s: %d object(s) to %s, %.2f s after its last instance (quiet time %.1f s)",
                     study_id(study["study_uid"]), n_files, ", ".join(map(str, self.cfg.send_to)),
                     now - float(study["last_instance_at"]), self.cfg.quiet_time)

    def finish_in_hand(self) -> None:
        """After a stop signal: send the studies of the last read once (a failure stays queued as usual)."""
        rows = [self.queue.find(uid) for uid in self.in_hand]
        rows = [r for r in rows if r is not None and r["state"] == "read" and r["next_at"] <= time.time()]
        if rows:
            self.send(rows)

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is None:
            LOG.info("%s: finishing the study in hand, then stopping", signal.Signals(signum).name)
        self.stop_signal = signum

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT; then RunInterrupted with that signal."""
        main = threading.current_thread() is threading.main_thread()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
        server, receiver = scp.start(self.cfg, self.queue)
        http = metrics.start(self.cfg.host, self.cfg.metrics_port, self.counters, receiver.counts, self.queue) \
            if self.cfg.metrics_port else None
        if not self.cfg.allow and self.cfg.host not in ("127.0.0.1", "localhost", "::1"):
            LOG.warning("listening on %s with no allow-list: any DICOM caller that reaches the port can send "
                        "studies; give --allow AET[@HOST],...", self.cfg.host)
        LOG.info("listening as %s on %s:%d; quiet time %.1f s; sending to %s; queue %s", self.cfg.aet,
                 self.cfg.host, self.cfg.port, self.cfg.quiet_time, ", ".join(map(str, self.cfg.send_to)),
                 _counts(self.queue))
        try:
            watcher = ModelWatcher(self.cfg.model, lambda: WarmModel(self.cfg.model, self.cfg.device, log=LOG.info))
            while self.stop_signal is None:
                self.model = watcher.poll() or self.model
                if not self.step():
                    time.sleep(self.cfg.poll)
            self.finish_in_hand()
        finally:
            server.shutdown()
            if http is not None:
                http.shutdown()
            for s, h in old.items():
                signal.signal(s, h)
        LOG.info("stopped; received %s; queue %s", receiver.counts, _counts(self.queue))
        raise RunInterrupted(self.stop_signal, "the study in hand was finished; queued studies resume at the "
                                               "next start")


def _counts(queue: Queue) -> str:
    return ", ".join(f"{k} {v}" for k, v in queue.counts().items() if v) or "empty"


def serve(cfg: NodeConfig) -> None:
    """Load the model once, then serve (vfa node)."""
    setup_logging()
    started = time.time()
    model = WarmModel(cfg.model, cfg.device, log=LOG.info)
    LOG.info("model loaded in %.1f s: %s (threshold %.3f)", time.time() - started, model.info.name, model.threshold)
    Node(cfg, model).run()
