"""Run `vfa` with a fault injected at a chosen point, for the fault-injection tests:

    VFA_FAULT=step:EPOCH:BATCH:SIGNAL   python -m tests.faults.inject train ...
    VFA_FAULT=write:NAME:NTH:SIGNAL     (the NTH atomic write of a file called NAME, after its
                                         temporary file is written and before it is renamed)
    VFA_FAULT=rows:NTH:SIGNAL           (vfa predict: after the NTH batch of rows is on disk)
    VFA_FAULT=torn:NTH:SIGNAL           (vfa predict: half-way through writing the NTH batch)

The signal is sent by the process to itself, exactly where asked: no timing, no races."""
import os
import signal
import sys


def main() -> int:
    kind, *spec = os.environ["VFA_FAULT"].split(":")
    sig = getattr(signal, spec[-1])
    if kind == "step":
        from vfa.training.module import VFAModule

        epoch, batch = int(spec[0]), int(spec[1])
        original = VFAModule.training_step

        def training_step(self, b, batch_idx):
            if self.current_epoch == epoch and batch_idx == batch:
                os.kill(os.getpid(), sig)
            return original(self, b, batch_idx)

        VFAModule.training_step = training_step
    elif kind == "write":
        import vfa.runs

        name, nth = spec[0], int(spec[1])
        seen = {"n": 0}
        replace = os.replace

        def fault_replace(src, dst):
            if os.path.basename(dst) == name:
                seen["n"] += 1
                if seen["n"] == nth:
                    os.kill(os.getpid(), sig)
            return replace(src, dst)

        vfa.runs.os.replace = fault_replace
    elif kind in ("rows", "torn"):
        from vfa.inference.output import RowWriter

        nth, seen = int(spec[0]), {"n": 0}
        write = RowWriter.write

        def fault_write(self, frame):
            seen["n"] += 1
            if seen["n"] == nth and kind == "torn":
                text = frame.to_csv(index=False, header=self.columns is None)
                self.f.write(text[: text.index("\n", len(text) // 2) - 3])  # half a batch, its last row cut
                self.f.flush()
                os.kill(os.getpid(), sig)
            write(self, frame)
            if seen["n"] == nth:
                os.kill(os.getpid(), sig)

        RowWriter.write = fault_write
    from vfa.cli import main as cli

    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
