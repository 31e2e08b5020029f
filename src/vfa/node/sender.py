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


def send_studies(studies: dict[str, list[Path]], destinations: list[Destination], calling_aet: str) -> dict:
    """Each study's files to every destination, one association per destination for them all;
    per study None (every destination accepted every file) or the first SendError."""
    errors: dict[str, SendError | None] = dict.fromkeys(studies)
    datasets = {}
    for key, files in studies.items():
        try:
            datasets[key] = [_read(f) for f in files]
        except Exception as exc:  # a result file that does not read: that study alone fails
            errors[key] = SendError(f"cannot read a result file ({type(exc).__name__})")
    for dest in destinations:
        for key, error in _send_one({k: v for k, v in datasets.items() if errors[k] is None}, dest,
                                    calling_aet).items():
            errors[key] = errors[key] or error
    return errors


def _send_one(studies: dict[str, list], dest: Destination, calling_aet: str) -> dict:
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    if not studies:
        return {}
    datasets = [ds for group in studies.values() for ds in group]
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        syntaxes = {str(ds.file_meta.TransferSyntaxUID) for ds in datasets if str(ds.SOPClassUID) == sop_class}
        ae.add_requested_context(sop_class, sorted(syntaxes | {ExplicitVRLittleEndian, ImplicitVRLittleEndian}))
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet)
    if not assoc.is_established:
        error = SendError(f"{dest}: association {'rejected' if assoc.is_rejected else 'failed'}")
        return dict.fromkeys(studies, error)
    try:
        return {key: _store_all(assoc, group, dest) for key, group in studies.items()}
    finally:
        if assoc.is_established:
            assoc.release()


def _store_all(assoc, datasets, dest: Destination) -> SendError | None:
    """One study's objects over an open association; the first failure, or None."""
    for ds in datasets:
        if not assoc.is_established:
            return SendError(f"{dest}: association lost")
        status = assoc.send_c_store(ds)
        code = int(getattr(status, "Status", -1)) if status else -1
        if code == -1:
            return SendError(f"{dest}: no answer to C-STORE (timeout or aborted)")
        if code != 0 and (code >> 12) != 0xB:  # 0xBxxx: a warning, the object is stored
            return SendError(f"{dest}: C-STORE answered 0x{code:04X}")
    return None
