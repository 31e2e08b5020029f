"""`vfa node` against real DICOM software (issue 28): DCMTK's echoscu/storescu send to the node, its
SR + SC arrive in DCMTK's storescp or in Debian's Orthanc, reference the source instance, pass
dciodvfy and carry the P(fracture) `vfa predict` gives on the same file; unknown callers are refused
at association; SIGTERM exits 143; kill -9 mid-read and restart leaves exactly one SR per study."""
from __future__ import annotations

import signal
import subprocess
import time
import warnings

import highdicom as hd
import pandas as pd
import pydicom
import pytest

from tests import oracles
from tests.node.support import Node, Orthanc, wait_for
from vfa.cli import main
from vfa.io.identifiers import IDENTIFIER_KEYWORDS

pytestmark = pytest.mark.slow
SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"


def dcmread(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def probability(sr) -> float:
    report = hd.sr.srread(sr.filename)  # read back through highdicom
    group = report.content.get_image_measurement_groups()[0]
    item = group.get_measurements(name=pydicom.sr.codedict.codes.DCM.Probability)[0]
    return float(item[0].MeasuredValueSequence[0].get("FloatingPointValue", item.value))


def predicted(ckpt, image, tmp_path) -> float:
    """P(fracture) of `vfa predict` on the same file."""
    out = tmp_path / f"predict-{image.stem}-{time.time_ns()}.csv"
    assert main(["predict", "--model", str(ckpt), str(image), "--out", str(out), "--device", "cpu"]) == 0
    return float(pd.read_csv(out)["raw"].iloc[0])


def validate(path) -> list[str]:
    res = subprocess.run([oracles.dciodvfy(), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]


def source_of(ds) -> str:
    if "SourceImageSequence" in ds:
        return str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
    ref = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    return str(ref.ReferencedSOPInstanceUID)


def run_tool(tool: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([oracles.dcmtk(tool), *map(str, args)], capture_output=True, text=True, timeout=120)


def received(folder) -> list:
    return [dcmread(p) for p in sorted(folder.iterdir()) if p.is_file()]


def check_results(objects, image, p_predict: float) -> None:
    """One SR and one SC for `image` in `objects`: its study, referencing it, the same P as predict."""
    src = dcmread(image)
    mine = [ds for ds in objects if source_of(ds) == src.SOPInstanceUID]
    assert sorted(str(ds.SOPClassUID) for ds in mine) == sorted([SR_CLASS, SC_CLASS])
    for ds in mine:
        assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    sr = next(ds for ds in mine if str(ds.SOPClassUID) == SR_CLASS)
    assert probability(sr) == pytest.approx(p_predict, abs=1e-6)


def bad_input_statuses(port: int, image) -> tuple[int, bool]:
    """pynetdicom as the sender: (status of a C-STORE of an image without StudyInstanceUID, whether a
    context offering only a transfer syntax vfa cannot decode (JPEG XL) was accepted)."""
    from pynetdicom import AE

    ds = dcmread(image)
    del ds.StudyInstanceUID
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.1.2.4.110")  # JPEG XL Lossless
    assoc = ae.associate("127.0.0.1", port, ae_title="VFA")
    assert assoc.is_established
    try:
        status = int(assoc.send_c_store(ds).Status)
        jpeg_xl = any(cx.abstract_syntax.endswith(".7.2") for cx in assoc.accepted_contexts)
    finally:
        assoc.release()
    return status, jpeg_xl


def test_storescu_to_node_to_storescp(node_inputs, storescp, tmp_path):
    """echoscu and storescu (allowed callers) -> the node -> SR + SC in storescp: valid, the source
    referenced, predict's P(fracture); an unknown caller refused; a non-VFA instance recorded and
    skipped; resend gives the same UIDs; no identifier in the log; SIGTERM exits 143."""
    dest, folder = storescp
    node = Node(tmp_path, node_inputs["ckpt"], dest, quiet_time=1.0, allow="ECHOSCU,STORESCU").start()
    image = node_inputs["images"][0]
    assert run_tool("echoscu", "-aet", "ECHOSCU", "-aec", "VFA", "127.0.0.1", node.port).returncode == 0
    stranger = run_tool("echoscu", "-aet", "STRANGER", "-aec", "VFA", "127.0.0.1", node.port)
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in stranger.stderr + stranger.stdout
    assert run_tool("storescu", "-aet", "STRANGER", "127.0.0.1", node.port, image).returncode != 0
    small = tmp_path / "small.dcm"  # a 8x8 SC: not a spine image, recorded and skipped
    from vfa.io.dicom import write_dicom
    import numpy as np
    write_dicom(small, np.zeros((8, 8), np.uint8), patient_id="PHANTOM-SMALL")
    sent = run_tool("storescu", "-aet", "STORESCU", "127.0.0.1", node.port, image, small)
    assert sent.returncode == 0, sent.stderr
    assert bad_input_statuses(node.port, image) == (0xC210, False)  # refused; the node keeps running
    study = str(dcmread(image).StudyInstanceUID)
    wait_for(lambda: node.states().get(study) == "sent", 120, "the SR and SC in storescp")  # storescp answered
    objects = received(folder)
    check_results(objects, image, predicted(node_inputs["ckpt"], image, tmp_path))
    for p in folder.iterdir():
        assert validate(p) == [], p.name
    status = subprocess.run([*node.args[:4], "status", "--store", str(node.store)], capture_output=True, text=True)
    assert "sent 1" in status.stdout and "skipped 1" in status.stdout and "image too small" in status.stdout
    uids = {str(ds.SOPInstanceUID) for ds in objects}
    resent = subprocess.run([*node.args[:4], "resend", study, "--store", str(node.store)], capture_output=True,
                            text=True)
    assert resent.returncode == 0 and "sent again" in resent.stdout, resent.stderr
    wait_for(lambda: node.log().count("sent study") == 2, 60, "the resent objects")
    # the same objects again (storescp names its files by SOP Instance UID: replaced, none added)
    assert len(list(folder.iterdir())) == 2 and {str(ds.SOPInstanceUID) for ds in received(folder)} == uids
    assert node.stop() == 128 + signal.SIGTERM
    log, src = node.log(), dcmread(image)
    assert "stopped by SIGTERM" in log
    for key in IDENTIFIER_KEYWORDS:
        value = str(src.get(key) or "")
        if len(value) > 4:
            assert value not in log, key
    assert not any(str(ds.SOPInstanceUID) in log for ds in objects)


def test_orthanc_sends_to_node_and_gets_results(node_inputs, tmp_path):
    """Orthanc's REST /modalities/vfa/store sends a phantom study to the node; the SR and SC come
    back into Orthanc, referencing the source, with predict's P(fracture), valid per dciodvfy."""
    node_port_holder = Node(tmp_path, node_inputs["ckpt"], "X@127.0.0.1:1")  # only for its free port
    orthanc = Orthanc(tmp_path, node_port_holder.port)
    try:
        node = Node(tmp_path, node_inputs["ckpt"], orthanc.aet, quiet_time=1.0, allow="ORTHANC")
        node.port = node_port_holder.port
        node.args[node.args.index("--port") + 1] = str(node.port)
        node.start()
        image = node_inputs["images"][1]
        instance = orthanc.post("/instances", image.read_bytes())["ID"]
        orthanc.post("/modalities/vfa/store", {"Resources": [instance], "Synchronous": True})
        wait_for(lambda: len(orthanc.get("/instances")) >= 3, 120, "the SR and SC in Orthanc")
        objects = []
        for iid in orthanc.get("/instances"):
            path = tmp_path / f"{iid}.dcm"
            path.write_bytes(orthanc.get(f"/instances/{iid}/file"))
            ds = dcmread(path)
            if ds.SOPInstanceUID != dcmread(image).SOPInstanceUID:  # the node's objects, not the phantom source
                objects.append(ds)
                assert validate(path) == [], str(ds.SOPClassUID)
        check_results(objects, image, predicted(node_inputs["ckpt"], image, tmp_path))
        # Orthanc routing everything new to the node sends the node's own SR and SC back: recorded and
        # skipped (not an image VFA arrives in, or the node's own picture), the study not started over
        results = [iid for iid in orthanc.get("/instances") if iid != instance]
        orthanc.post("/modalities/vfa/store", {"Resources": results, "Synchronous": True})
        time.sleep(3)
        study = str(dcmread(image).StudyInstanceUID)
        assert node.states()[study] == "sent" and len(orthanc.get("/instances")) == 3
        assert node.log().count("sent study") == 1 and node.log().count("skipped instance") == 2
        assert node.stop() == 128 + signal.SIGTERM
    finally:
        orthanc.stop()


@pytest.mark.parametrize("kill_in", ["complete", "read"])
def test_kill9_then_restart_gives_exactly_one_sr(node_inputs, tmp_path, kill_in):
    """kill -9 of the node while a study is being read (state complete) or sent (state read), then a
    restart: the study ends in Orthanc with exactly one SR and one SC."""
    orthanc = Orthanc(tmp_path, 1)
    try:
        node = Node(tmp_path, node_inputs["ckpt"], orthanc.aet, quiet_time=0.5).start()
        image = node_inputs["images"][2]
        study = str(dcmread(image).StudyInstanceUID)
        assert run_tool("storescu", "-aet", "STORESCU", "127.0.0.1", node.port, image).returncode == 0
        wait_for(lambda: node.states().get(study) == kill_in, 120, f"state {kill_in}", poll=0.002)
        node.stop(signal.SIGKILL)
        assert node.states()[study] == kill_in  # killed before that step was recorded as done
        node.start()
        wait_for(lambda: node.states().get(study) == "sent", 120, "the study sent after the restart")
        after = (node.tmp / "node-2.log").read_text()
        assert ("read study" in after) == (kill_in == "complete") and "sent study" in after
        time.sleep(1)
        classes = [c for c, _ in orthanc.sop_classes()]
        assert classes.count(SR_CLASS) == 1 and classes.count(SC_CLASS) == 1, classes
        node.stop()
    finally:
        orthanc.stop()


def test_destination_down_then_back_and_metrics(node_inputs, tmp_path):
    """Orthanc down when a study's results are ready: the send fails, is retried with back-off, and
    the results arrive once Orthanc is up; /health and /metrics say so."""
    import urllib.request

    from tests.node.support import free_port

    orthanc_port, metrics_port = free_port(), free_port()
    node = Node(tmp_path, node_inputs["ckpt"], f"ORTHANC@127.0.0.1:{orthanc_port}", quiet_time=0.5,
                settings={"retry_base": 0.5, "retry_max": 2, "max_attempts": 100, "metrics_port": metrics_port}).start()
    image = node_inputs["images"][3]
    study = str(dcmread(image).StudyInstanceUID)
    assert run_tool("storescu", "-aet", "STORESCU", "127.0.0.1", node.port, image).returncode == 0
    wait_for(lambda: "send of study" in node.log(), 120, "a failed send")
    status = subprocess.run([*node.args[:4], "status", "--store", str(node.store)], capture_output=True, text=True)
    assert "read 1" in status.stdout and "association failed" in status.stdout and study not in status.stdout
    assert "(1 failed, waiting to retry)" in status.stdout
    orthanc = Orthanc(tmp_path, node.port, dicom_port=orthanc_port)
    try:
        wait_for(lambda: node.states().get(study) == "sent", 120, "the study sent once Orthanc is up")
        classes = [c for c, _ in orthanc.sop_classes()]
        assert classes.count(SR_CLASS) == 1 and classes.count(SC_CLASS) == 1
        base = f"http://127.0.0.1:{metrics_port}"
        with urllib.request.urlopen(base + "/health", timeout=10) as r:
            assert r.status == 200 and b'"sent": 1' in r.read()
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        assert "vfa_node_studies_sent_total 1" in text and 'vfa_node_instances_total{outcome="stored"} 1' in text
        assert "vfa_node_studies_failed_total 0" not in text and "vfa_node_latency_seconds_count 1" in text
        assert node.stop() == 128 + signal.SIGTERM
    finally:
        orthanc.stop()


def test_kill9_mid_receive_and_two_senders(node_inputs, tmp_path):
    """kill -9 while storescu is sending four studies, a restart, then two senders at once: every
    study the node acknowledged ends in Orthanc with exactly one SR (and one SC) per image."""
    import threading

    orthanc = Orthanc(tmp_path, 1)
    try:
        node = Node(tmp_path, node_inputs["ckpt"], orthanc.aet, quiet_time=0.5).start()
        images = node_inputs["images"]
        sender = threading.Thread(target=run_tool, args=("storescu", "-aet", "STORESCU", "127.0.0.1", node.port,
                                                         *images))
        sender.start()
        wait_for(lambda: node.states(), 60, "the first instance acknowledged", poll=0.002)
        node.stop(signal.SIGKILL)
        sender.join()
        acknowledged = set(node.states())
        assert acknowledged
        node.start()
        twice = [threading.Thread(target=run_tool, args=("storescu", "-aet", f"SENDER{k}", "127.0.0.1", node.port,
                                                         *images[k::2])) for k in (0, 1)]
        for t in twice:
            t.start()
        for t in twice:
            t.join()
        wait_for(lambda: set(node.states().values()) == {"sent"} and len(node.states()) == 4, 180, "all sent")
        stored = orthanc.sop_classes()
        assert [c for c, _ in stored].count(SR_CLASS) == 4 and [c for c, _ in stored].count(SC_CLASS) == 4
        node.stop()
    finally:
        orthanc.stop()


def test_sigterm_finishes_the_study_in_hand(node_inputs, storescp, tmp_path):
    """SIGTERM while a study is being read: it is read and sent, then the node exits 143."""
    dest, folder = storescp
    node = Node(tmp_path, node_inputs["ckpt"], dest, quiet_time=0.5).start()
    image = node_inputs["images"][0]
    study = str(dcmread(image).StudyInstanceUID)
    assert run_tool("storescu", "-aet", "STORESCU", "127.0.0.1", node.port, image).returncode == 0
    wait_for(lambda: node.states().get(study) == "complete", 120, "the read to start", poll=0.002)
    assert node.stop(signal.SIGTERM) == 128 + signal.SIGTERM
    assert node.states()[study] == "sent" and len(received(folder)) == 2


def test_hot_reload_of_a_new_model_file(node_inputs, storescp, tmp_path):
    """A new checkpoint moved over the node's model file: the next study is read with it (its
    P(fracture) is `vfa predict`'s with the new file) without a restart."""
    import shutil

    from tests.helpers import make_checkpoint

    dest, folder = storescp
    model = tmp_path / "model.ckpt"
    shutil.copy(node_inputs["ckpt"], model)
    node = Node(tmp_path, model, dest, quiet_time=0.5).start()
    make_checkpoint(tmp_path / "new.ckpt", seed=1).replace(model)
    wait_for(lambda: "model reloaded" in node.log(), 120, "the reload")
    image = node_inputs["images"][1]
    assert run_tool("storescu", "-aet", "STORESCU", "127.0.0.1", node.port, image).returncode == 0
    wait_for(lambda: node.states().get(str(dcmread(image).StudyInstanceUID)) == "sent", 120, "the study sent")
    check_results(received(folder), image, predicted(model, image, tmp_path))
    assert predicted(model, image, tmp_path) != pytest.approx(predicted(node_inputs["ckpt"], image, tmp_path), abs=1e-6)
    node.stop()


def test_per_vertebra_model(node_inputs, storescp, tmp_path):
    """A per-vertebra model in the node: its SR and outlined SC arrive with `vfa predict`'s P(fracture)."""
    import torch

    from tests.helpers import TINY
    from vfa import checkpoint, config
    from vfa.registry import FAMILIES

    cfg = config.resolve("vertebra-demo", overrides=config.parse_set(TINY))
    torch.manual_seed(0)
    net = FAMILIES.of(cfg).step("build")(cfg)
    net.detector.heads["heat"][-1].bias.data.fill_(4.0)  # random weights then read (random) bodies
    ckpt = checkpoint.save(tmp_path / "v.ckpt", net, cfg, force=True)
    dest, folder = storescp
    node = Node(tmp_path, ckpt, dest, quiet_time=0.5).start()
    image = node_inputs["images"][0]
    assert run_tool("storescu", "-aet", "STORESCU", "127.0.0.1", node.port, image).returncode == 0
    wait_for(lambda: node.states().get(str(dcmread(image).StudyInstanceUID)) == "sent", 120, "the study sent")
    objects = received(folder)
    check_results(objects, image, predicted(ckpt, image, tmp_path))
    sc = next(ds for ds in objects if str(ds.SOPClassUID) == SC_CLASS)
    assert "vertebrae outlined" in sc.DerivationDescription
    for p in folder.iterdir():
        assert validate(p) == [], p.name
    node.stop()
