"""The receiving side: pynetdicom's Storage SCP and Verification (C-ECHO) on the node's AE title.

Callers not on the allow-list are rejected at association (pynetdicom's require_calling_aet; an
entry AET@HOST also ties the title to an address, checked per request and refused with 0x0124).
Every storage class is accepted, so that a PACS sending a whole DXA study does not fail on the hip
image; what is not a VFA image is recorded and skipped (vfa.node.screen). A VFA image is written
atomically into the store and recorded in the queue before the C-STORE is answered: success means
it is on disk and will be read, whatever happens to the process next."""
from __future__ import annotations

import io
import logging
import os
import warnings

from vfa.node.config import NodeConfig
from vfa.node.queue import Queue, study_id
from vfa.node.screen import DEFLATED, VFA_CLASSES, decodable_syntaxes, skip_reason

LOG = logging.getLogger("vfa.node")
SUCCESS, NOT_AUTHORIZED, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0x0124, 0xA700, 0xC210


def instance_path(store, study_uid: str, sop_uid: str):
    """Where a received instance lives: incoming/<hashed study>/<hashed instance>.dcm (no UID in a name)."""
    from pathlib import Path

    return Path(store) / "incoming" / study_id(study_uid) / f"{study_id(sop_uid)}.dcm"


def write_durably(path, data: bytes) -> None:
    """tmp + fsync + rename + fsync of the folder: after this returns the file survives a power cut."""
    from vfa.runs import atomic_write

    atomic_write(path, data)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself is on disk too
    finally:
        os.close(fd)


def _caller_allowed(allow: list[str], aet: str, address: str) -> bool:
    if not allow:
        return True
    return any(entry == aet or entry == f"{aet}@{address}" for entry in allow)


class Receiver:
    """The C-STORE and C-ECHO handlers over one store and queue; `counts` for the log and metrics."""

    def __init__(self, cfg: NodeConfig, queue: Queue):
        self.cfg, self.queue = cfg, queue
        self.counts = {"stored": 0, "skipped": 0, "refused": 0}

    def on_echo(self, event) -> int:
        r = event.assoc.requestor
        return SUCCESS if _caller_allowed(self.cfg.allow, r.ae_title.strip(), r.address) else NOT_AUTHORIZED

    def on_store(self, event) -> int:
        r = event.assoc.requestor
        caller = r.ae_title.strip()
        if not _caller_allowed(self.cfg.allow, caller, r.address):
            self.counts["refused"] += 1
            LOG.warning("refused C-STORE from %s: not on the allow-list for this address", caller)
            return NOT_AUTHORIZED
        try:
            data = event.encoded_dataset(include_meta=True)
            ds = _header(data)
        except Exception as exc:  # a malformed dataset: refused, the node carries on
            self.counts["refused"] += 1
            LOG.warning("refused C-STORE from %s: cannot parse the dataset (%s)", caller, type(exc).__name__)
            return CANNOT_UNDERSTAND
        return self._keep(ds, data, caller)

    def _keep(self, ds, data: bytes, caller: str) -> int:
        reason = skip_reason(ds, self.cfg.min_side)
        study = str(ds.get("StudyInstanceUID", "") or "")
        sop = str(ds.get("SOPInstanceUID", "") or "")
        if not study or not sop:
            self.counts["refused"] += 1
            LOG.warning("refused C-STORE from %s: %s", caller, reason or "no StudyInstanceUID/SOPInstanceUID")
            return CANNOT_UNDERSTAND
        path = None
        try:
            if reason is None:
                path = instance_path(self.queue.store, study, sop)
                write_durably(path, data)
            self.queue.record(study, sop, str(path) if path else None, str(ds.get("SOPClassUID", "")), reason,
                              caller)
        except OSError as exc:  # a full disk: the sender keeps the image and retries
            LOG.error("cannot store an instance of study %s: %s", study_id(study), exc.strerror or exc)
            return OUT_OF_RESOURCES
        kind = "skipped" if reason else "stored"
        self.counts[kind] += 1
        LOG.info("%s instance %s of study %s from %s%s", kind, study_id(sop), study_id(study), caller,
                 f": {reason}" if reason else "")
        return SUCCESS


def _header(data: bytes):
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def make_ae(cfg: NodeConfig):
    """The AE: Verification, the VFA classes in every syntax vfa decodes, every other storage class in
    pynetdicom's default syntaxes (received and skipped), callers restricted to the allow-list."""
    from pynetdicom import AE, AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=cfg.aet)
    ae.maximum_associations = 16
    ae.add_supported_context(Verification)
    syntaxes = decodable_syntaxes()
    for uid in VFA_CLASSES:
        ae.add_supported_context(uid, syntaxes)
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax not in VFA_CLASSES:
            ae.add_supported_context(cx.abstract_syntax, [ts for ts in cx.transfer_syntax if ts != DEFLATED])
    if cfg.allow:
        ae.require_calling_aet = sorted({entry.partition("@")[0] for entry in cfg.allow})
    return ae


def start(cfg: NodeConfig, queue: Queue):
    """The SCP listening on cfg.host:cfg.port in pynetdicom's threads; (server, receiver)."""
    from pynetdicom import evt

    receiver = Receiver(cfg, queue)
    handlers = [(evt.EVT_C_STORE, receiver.on_store), (evt.EVT_C_ECHO, receiver.on_echo)]
    server = make_ae(cfg).start_server((cfg.host, cfg.port), block=False, evt_handlers=handlers)
    return server, receiver
