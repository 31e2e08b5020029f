"""Results out: C-STORE SCU (pynetdicom) of a study's SR and SC files to each destination.

One association per destination and study, proposing each file's SOP class in its own transfer
syntax (and the uncompressed ones, so a peer that accepts only implicit VR still gets it). A study
counts as sent only when every destination answered every file with success (or a warning); any
other outcome is an error naming the destination, and the queue retries the whole study later:
the objects' UIDs are fixed, so what a destination already has is replaced, not duplicated."""
from __future__ import annotations

import warnings
from pathlib import Path

from vfa.node.config import Destination

TIMEOUT = 30  # seconds for the association, the DIMSE answer and the network


class SendError(RuntimeError):
    """A destination refused, timed out or answered a C-STORE with a failure."""


def _read(path: Path):
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def send_files(files: list[Path], destinations: list[Destination], calling_aet: str) -> None:
    """Every file to every destination, or SendError naming the first that failed."""
    datasets = [_read(f) for f in files]
    for dest in destinations:
        _send_one(datasets, dest, calling_aet)


def _send_one(datasets, dest: Destination, calling_aet: str) -> None:
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        syntaxes = {str(ds.file_meta.TransferSyntaxUID) for ds in datasets if str(ds.SOPClassUID) == sop_class}
        ae.add_requested_context(sop_class, sorted(syntaxes | {ExplicitVRLittleEndian, ImplicitVRLittleEndian}))
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet)
    if not assoc.is_established:
        raise SendError(f"{dest}: association {'rejected' if assoc.is_rejected else 'failed'}")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code == -1:
                raise SendError(f"{dest}: no answer to C-STORE (timeout or aborted)")
            if code != 0 and (code >> 12) != 0xB:  # 0xBxxx: a warning, the object is stored
                raise SendError(f"{dest}: C-STORE answered 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
