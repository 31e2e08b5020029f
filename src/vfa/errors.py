"""User errors: what the CLI reports as one line (exit code 2) instead of a traceback."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot drive a run (unknown key, missing data path, bad value)."""


class RunInterrupted(BaseException):
    """SIGTERM (preemption, `timeout`, `docker stop`) or SIGINT: the CLI exits 128 + signal number
    with one line saying what was kept. A BaseException, so that no `except Exception` swallows it."""

    def __init__(self, signum: int, hint: str = ""):
        self.signum, self.hint = signum, hint
        super().__init__(signum)


def raise_on_signals(signums=None):
    """Turn SIGTERM and SIGINT into RunInterrupted in this (main) thread; returns the old handlers."""
    import os
    import signal

    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked worker (DataLoader, process pool): not its decision
            if signum == signal.SIGINT:
                return  # Ctrl-C reaches the whole process group: the main process handles it
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        raise RunInterrupted(signum)

    old = {}
    for s in signums or (signal.SIGTERM, signal.SIGINT):
        old[s] = signal.signal(s, handler)
    return old
