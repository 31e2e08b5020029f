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


_RECEIVED: list[int] = []  # signals raise_on_signals' handler saw in this process


def received_signal() -> int | None:
    """The first SIGTERM/SIGINT this process received, even if its RunInterrupted was swallowed
    (raised inside a finalizer or a library's `except BaseException`, Python only prints it)."""
    return _RECEIVED[0] if _RECEIVED else None


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
        _RECEIVED.append(signum)
        raise RunInterrupted(signum)

    old = {}
    for s in signums or (signal.SIGTERM, signal.SIGINT):
        old[s] = signal.signal(s, handler)
    return old
