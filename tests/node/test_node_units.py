"""`vfa node`'s parts without a network: settings, the screen of non-VFA instances, the queue's state
machine (quiet time, version guard, back-off, dead letter, resend), UIDs derived from the source."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from vfa.cli import main
from vfa.errors import ConfigError
from vfa.io.dicom import write_dicom
from vfa.node import config
from vfa.node.queue import Queue, study_id
from vfa.node.results import derived_uid
from vfa.node.screen import skip_reason


def test_settings_from_yaml_and_options(tmp_path):
    yml = tmp_path / "node.yaml"
    yml.write_text("aet: READER\nsend_to: [PACS@10.0.0.5:104, WL@127.0.0.1:4242]\nquiet_time: 30\n"
                   "allow: [ORTHANC, SCANNER@10.0.0.9]\nmodel: m.ckpt\n")
    cfg = config.resolve(yml, store=str(tmp_path / "s"), port=2000, quiet_time=None)
    assert (cfg.aet, cfg.port, cfg.quiet_time, cfg.model) == ("READER", 2000, 30.0, ["m.ckpt"])
    assert [str(d) for d in cfg.send_to] == ["PACS@10.0.0.5:104", "WL@127.0.0.1:4242"]
    assert cfg.allow == ["ORTHANC", "SCANNER@10.0.0.9"] and cfg.host == "127.0.0.1"


@pytest.mark.parametrize("overrides, message", [
    ({"send_to": "PACS@host"}, "AET@HOST:PORT"), ({"aet": "A" * 17}, "1-16"), ({"quiet_time": -1}, "quiet_time"),
    ({"port": 70000}, "port"), ({"store": ""}, "--store")])
def test_bad_settings_are_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.resolve(None, **{"store": str(tmp_path), **overrides})


def test_bad_cli_input_is_one_line_exit_2(tmp_path, capsys):
    yml = tmp_path / "node.yaml"
    yml.write_text("colour: blue\n")
    assert main(["node", "--config", str(yml), "--store", str(tmp_path)]) == 2
    assert main(["node", "--store", str(tmp_path), "--send-to", "X@h:1"]) == 2  # no model
    assert main(["node", "status", "--store", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "unknown setting(s) colour" in err[0] and "--model" in err[1] and "no node queue" in err[2]


def _header(path):
    return pydicom.dcmread(path, stop_before_pixels=True)


def test_screen_keeps_vfa_images_and_says_why_not(tmp_path):
    ok = _header(write_dicom(tmp_path / "ok.dcm", np.zeros((160, 96), np.uint8)))
    assert skip_reason(ok, 64) is None
    assert "too small" in skip_reason(_header(write_dicom(tmp_path / "s.dcm", np.zeros((8, 8), np.uint8))), 64)
    hip = _header(write_dicom(tmp_path / "hip.dcm", np.zeros((160, 96), np.uint8)))
    hip.BodyPartExamined = "HIP"
    assert skip_reason(hip, 64) == "body part HIP is not the spine"
    ok.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # an SR (vfa's own result coming back) is not read
    assert "Comprehensive SR" in skip_reason(ok, 64)
    assert "too large" in skip_reason(_header(tmp_path / "ok.dcm"), 64, max_pixels=100)
    own = _header(tmp_path / "ok.dcm")
    own.Manufacturer = "vfa (open source)"  # the node's own SC routed back by the PACS
    assert "a vfa result" in skip_reason(own, 64)


def test_queue_states_version_guard_backoff_dead_letter(tmp_path):
    q = Queue(tmp_path)
    q.record("1.2.3.4.5", "1.2.3.4.5.1", str(tmp_path / "a.dcm"), "sc", None, "X", now=100.0)
    q.record("1.2.3.4.6", "1.2.3.4.6.1", None, "sr", "not VFA", "X", now=100.0)
    q.promote(10, now=105.0)
    assert q.counts()["received"] == 2  # not yet quiet
    q.promote(10, now=111.0)
    assert (q.counts()["complete"], q.counts()["skipped"]) == (1, 1)
    taken = q.due("complete")[0]
    q.record("1.2.3.4.5", "1.2.3.4.5.2", str(tmp_path / "b.dcm"), "sc", None, "X", now=112.0)  # arrives mid-read
    assert not q.advance(taken, "read") and q.counts()["received"] == 1  # read again, whole
    assert q.images("1.2.3.4.5") == [str(tmp_path / "a.dcm"), str(tmp_path / "b.dcm")]
    q.promote(0)
    study = q.due("complete")[0]
    assert q.fail(study, "boom", max_attempts=2, base=60, cap=300) == "complete"
    assert q.due("complete") == []  # backing off
    assert q.fail(q.find("1.2.3.4.5"), "boom again", max_attempts=2, base=60, cap=300) == "dead"
    assert q.errors()[0]["study"] == study_id("1.2.3.4.5") and "1.2.3.4.5" not in str(q.errors())
    assert q.resend(study_id("1.2.3.4.5")) == "complete" and q.due("complete") != []
    q.record("1.2.3.4.5", "1.2.3.4.5.9", None, "sr", "its own SR routed back", "X")
    assert q.find("1.2.3.4.5")["state"] == "complete"  # a skipped instance does not start the study over


def test_result_uids_are_fixed_by_the_source():
    a, b = derived_uid("1.2.3", "sr"), derived_uid("1.2.3", "sc")
    assert a == derived_uid("1.2.3", "sr") and a != b and a != derived_uid("1.2.4", "sr")
    assert pydicom.uid.UID(a).is_valid and len(a) <= 64
