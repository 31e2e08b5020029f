"""Run `vfa` with faults for the sharded-predict tests (every rank Lightning launches re-runs this
module with the same environment):

    VFA_SHARD_KILL=N0,N1      rank R SIGKILLs itself right after its N_R-th batch of rows is on disk
    VFA_LATE_BAD=NAME,NAME    files whose name contains NAME pass the up-front check, then fail to
                              decode in the loader (as a file replaced mid-run would)

Exactly where asked, so the test has no timing to guess."""
import os
import signal
import sys


def main() -> int:
    kill = os.environ.get("VFA_SHARD_KILL")
    if kill:
        from vfa.inference.sharded import _ShardWriter

        after, seen = [int(n) for n in kill.split(",")], {"n": 0}
        write = _ShardWriter.write_on_batch_end

        def fault_write(self, trainer, *args, **kwargs):
            write(self, trainer, *args, **kwargs)
            seen["n"] += 1
            if seen["n"] == after[trainer.global_rank]:
                os.kill(os.getpid(), signal.SIGKILL)

        _ShardWriter.write_on_batch_end = fault_write
    late = os.environ.get("VFA_LATE_BAD")
    if late:
        from vfa.data.stream import FileViews

        names, getitem = late.split(","), FileViews.__getitem__

        def fault_getitem(self, i):
            if any(n in os.path.basename(self.paths[i]) for n in names):
                return None, self.positions[i], 0, 0, "cannot decode (injected)"
            return getitem(self, i)

        FileViews.__getitem__ = fault_getitem
    from vfa.cli import main as cli

    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
