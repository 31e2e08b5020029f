"""Hot reload: a new model file in place of the loaded one is picked up between studies, without
closing the port (the SCP keeps receiving in its own threads while the new model loads).

A change is acted on once the files' size and mtime have stayed the same for two looks `every`
seconds apart (a copy in progress is not loaded half-written); a file that then does not load is
logged and the loaded model is kept. Replace the file atomically (`mv new.ckpt best.ckpt`) to be safe."""
from __future__ import annotations

import logging
import os
import time

LOG = logging.getLogger("vfa.node")


def _stamp(paths) -> tuple:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


class ModelWatcher:
    """`poll()` returns a freshly loaded model when the watched files changed and settled, else None."""

    def __init__(self, paths, load, every: float = 2.0):
        self.paths, self.load, self.every = list(paths), load, every
        self.loaded = _stamp(self.paths)
        self.seen, self.last = self.loaded, time.monotonic()

    def poll(self):
        if time.monotonic() - self.last < self.every:
            return None
        self.last = time.monotonic()
        now = _stamp(self.paths)
        settled, self.seen = now == self.seen, now
        if now == self.loaded or not settled or None in now:
            return None
        self.loaded = now  # tried once per version of the files, whether it loads or not
        started = time.time()
        try:
            model = self.load()
        except Exception as exc:  # a bad new file must not take the node down: keep serving with the old one
            LOG.error("the model file changed but does not load (%s: %s); keeping the loaded model",
                      type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            return None
        LOG.info("model reloaded in %.1f s: %s (threshold %.3f)", time.time() - started, model.info.name,
                 model.threshold)
        return model
