"""Not evaluable instead of guessed: the readability head (its loss, its prior, checkpoints written
before it), the rows a body below P(readable) 0.5 gets, the image call without it, the truth
table's `readable` and `mimic`, the overlay, and the DICOM SR (valid by dciodvfy)."""
import io
import math
import subprocess

import highdicom as hd
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import log_loss
from torch import nn
from torch.nn import functional as F

from tests import oracles
from tests.vertebra.helpers import body
from vfa import checkpoint, config
from vfa.config import VertebraConfig
from vfa.data.samples import DataError, Samples
from vfa.data.vertebrae import read_vertebrae, readable_of, vendors_of
from vfa.explain.outlines import draw_spine, png
from vfa.inference.vertebra import image_rows, place_points, spine_rows
from vfa.models.loading import load_model
from vfa.models.vertebra import READABLE_PRIOR, LandmarkNet
from vfa.registry import FAMILIES
from vfa.spine import GRADE_COLOURS, NOT_EVALUABLE_COLOUR
from vfa.training.vertebra import crop_losses

TINY = ["data.size=[160,96]", "vertebra.detector_size=[96,56]", "vertebra.crop_size=32", "vertebra.width=16",
        "vertebra.detector_backbone=resnet10t", "vertebra.landmark_backbone=resnet10t"]


def spine(n=3):
    pts = np.stack([body(40 * i) for i in range(n)])
    return pts, np.arange(n)


# ------------------------------------------------------------------ the rows and the image call


def test_a_body_below_p_readable_half_is_reported_not_evaluable():
    pts, lv = spine()
    pts[1, 0, 1] += 12           # T5: anterior 18 of posterior 30 (wedge 0.6): the rules grade it 3
    rows = spine_rows("a.png", pts, lv, np.array([0.1, 0.9, 0.2]), 0.5, np.array([0.9, 0.49, 0.5]))
    assert list(rows["evaluable"]) == [1, 0, 1] and list(rows["p_readable"]) == [0.9, 0.49, 0.5]
    assert rows["grade"].isna().tolist() == [False, True, False]
    assert list(rows["type"]) == ["normal", "", "normal"] and list(rows["grade_source"]) == ["rules", "", "rules"]
    assert np.isnan(rows["p_fracture"][1]) and rows["hp"][1] == pytest.approx(30)   # its heights stay
    csv = pd.read_csv(io.StringIO(rows.to_csv(index=False, float_format="%.3f")), dtype=str, keep_default_na=False)
    assert list(csv["grade"]) == ["0", "", "0"]    # integers, and an empty cell, not 0.000 or nan
    # the same body read evaluable is a grade-3 fracture that makes the image fractured
    read = spine_rows("a.png", pts, lv, np.array([0.1, 0.9, 0.2]), 0.5)
    assert list(read["grade"]) == [0, 3, 0] and list(read["evaluable"]) == [1, 1, 1]
    img = image_rows([rows, read, spine_rows("", np.zeros((0, 6, 2)), np.zeros(0, int), np.zeros(0))], 0.5)
    assert list(img["predicted"]) == [0, 1, 0] and list(img["max_grade"]) == [0, 3, 0]
    assert img["raw"][0] == pytest.approx(0.2)   # the evaluable bodies' highest P; T5's 0.9 does not count


class Readability(nn.Module):
    """Landmarks at the crop's centre, P(fracture) 0.5, and readable when the crop is bright."""

    def forward(self, crops):
        q = torch.tensor([[-0.2, -0.2], [0, -0.2], [0.2, -0.2], [-0.2, 0.2], [0, 0.2], [0.2, 0.2]])
        return q.expand(len(crops), 6, 2).clone(), torch.zeros(len(crops)), 20 * (crops.mean((1, 2, 3)) - 0.25)


class Model(nn.Module):
    def __init__(self, landmarks):
        super().__init__()
        self.landmarks = landmarks


def test_place_points_reads_p_readable_from_the_landmark_network():
    img = torch.zeros(1, 1, 128, 64)
    img[..., :64, :] = 1.0                                     # the upper half bright, the lower dark
    found = [(np.array([[32.0, 30.0], [32.0, 95.0]]), np.array([0, 2]))]
    (pts, prob, ok, _), = place_points(Model(Readability()), img, found, VertebraConfig(crop_size=16, crop_scale=1.0))
    assert pts.shape == (2, 6, 2) and ok[0] > 0.99 and ok[1] < 0.01


# ------------------------------------------------------------------ the head and old checkpoints


def test_the_untrained_head_reads_every_body_evaluable():
    net = LandmarkNet("resnet10t", 16).eval()
    with torch.no_grad():
        _, _, read, _ = net(torch.randn(4, 1, 32, 32) * 5)
    np.testing.assert_allclose(torch.sigmoid(read).numpy(), 1 / (1 + math.exp(-READABLE_PRIOR)), rtol=1e-6)


def test_an_old_checkpoint_without_the_head_loads_and_reads_all_evaluable(tmp_path):
    cfg = config.resolve("vertebra-demo", overrides=config.parse_set(TINY))
    torch.manual_seed(0)
    net = FAMILIES.of(cfg).step("build")(cfg)
    net.landmarks.readable.bias.data.fill_(-3.0)         # a trained head, to tell it from the prior
    new = checkpoint.save(tmp_path / "new.ckpt", net, cfg, force=True)
    del net.landmarks.readable                            # what a checkpoint written before the head holds
    old = checkpoint.save(tmp_path / "old.ckpt", net, cfg, force=True)
    assert not any("readable" in k for k in checkpoint.load(old)["state_dict"])
    loaded = load_model(old)
    assert loaded.landmarks.readable.bias.item() == READABLE_PRIOR
    assert loaded.landmarks.readable.weight.abs().sum().item() == 0
    assert torch.equal(loaded.landmarks.fracture[1].weight, net.landmarks.fracture[1].weight)
    assert load_model(new).landmarks.readable.bias.item() == -3.0   # a checkpoint with the head keeps it


def test_the_readability_loss_is_masked_where_the_truth_does_not_say():
    logit, frac = torch.tensor([0.3, -1.0, 2.0, 0.5]), torch.tensor([1.0, 0.0, 1.0, 0.0])
    read, pw = torch.tensor([1.5, -0.5, 0.2, 3.0], requires_grad=True), torch.tensor(2.0)
    # no `readable` in the table: the fracture loss exactly as before, the readability loss an exact 0
    f, r = crop_losses(logit, frac, read, torch.full((4,), -1.0), pw)
    assert torch.equal(f, F.binary_cross_entropy_with_logits(logit, frac, pos_weight=pw))
    assert float(r) == 0.0 and not r.requires_grad
    # known for three: BCE over those (scikit-learn's log loss); the unreadable body leaves the fracture loss
    truth = torch.tensor([1.0, 0.0, -1.0, 1.0])
    f, r = crop_losses(logit, frac, read, truth, pw)
    p = torch.sigmoid(read.detach()).numpy()
    assert float(r.detach()) == pytest.approx(log_loss([1, 0, 1], p[[0, 1, 3]], labels=[0, 1]), rel=1e-5)
    keep = torch.tensor([True, False, True, True])
    assert torch.equal(f, F.binary_cross_entropy_with_logits(logit[keep], frac[keep], pos_weight=pw))
    r.backward()
    assert read.grad[2] == 0 and read.grad[0] != 0


# ------------------------------------------------------------------ the truth table


def test_readable_and_mimic_in_the_truth_table(tmp_path):
    rows = ["filename,level,grade,readable,mimic", "a.png,T4,0,0,", "a.png,T5,0,1,schmorl", "a.png,T6,1,,"]
    (tmp_path / "v.csv").write_text("\n".join(rows) + "\n")
    t = read_vertebrae(tmp_path / "v.csv")
    np.testing.assert_array_equal(readable_of(t), [0, 1, np.nan])
    assert list(t["mimic"]) == ["none", "schmorl", "none"]
    assert np.isnan(readable_of(t.drop(columns="readable"))).all()
    (tmp_path / "bad.csv").write_text("filename,level,grade,readable\na.png,T4,0,1\na.png,T5,0,yes\n")
    with pytest.raises(DataError, match=r"bad.csv line 3: readable must be 0, 1 or empty, got 'yes'"):
        read_vertebrae(tmp_path / "bad.csv")


def test_vendors_come_from_the_manifest_beside_the_data(tmp_path):
    (tmp_path / "manifest.csv").write_text("filename,label,vendor\na.png,0,hologic\nb.png,1,lunar\n")
    s = Samples([str(tmp_path / "b.png"), str(tmp_path / "a.png"), str(tmp_path / "c.png")], [1, 0, 0], str(tmp_path))
    assert vendors_of(s, f"{tmp_path / 'manifest.csv'}:test") == ["lunar", "hologic", ""]
    assert vendors_of(s, tmp_path) == ["lunar", "hologic", ""]
    (tmp_path / "manifest.csv").write_text("filename,label\na.png,0\n")
    assert vendors_of(s, tmp_path) is None


# ------------------------------------------------------------------ overlay and DICOM SR


def test_the_overlay_draws_a_body_not_evaluable_gray_and_dashed():
    pts, lv = spine(2)
    rows = spine_rows("a.png", pts + 10, lv, np.array([0.1, 0.1]), 0.5, np.array([0.9, 0.1]))
    pic = np.asarray(Image.open(io.BytesIO(png(draw_spine(np.zeros((120, 80)), rows, scale=2)))))
    colours = {tuple(c) for c in pic.reshape(-1, 3)}
    assert GRADE_COLOURS[0] in colours and NOT_EVALUABLE_COLOUR in colours
    # dashed: along T5's anterior wall (x = 10 px, y 50-80, drawn at 2x) gray and black alternate
    wall = pic[110:150, 20]
    gray = (wall == NOT_EVALUABLE_COLOUR).all(1)
    assert 0.2 < gray.mean() < 0.8 and (np.diff(gray.astype(int)) != 0).sum() >= 4


def test_the_sr_reports_a_level_not_evaluable_and_stays_valid(tmp_path):
    from vfa.io.dicom_out import ModelInfo, write_outputs
    from vfa.phantom.synth import PhantomConfig, synthesize

    synthesize(tmp_path / "ph", PhantomConfig(n=1, size=(160, 96), seed=3, workers=1, splits=(0.0, 0.0, 1.0),
                                              format="dicom"), progress=False, force=True)
    v = pd.read_csv(tmp_path / "ph" / "vertebrae.csv").rename(columns={"filename": "file"})
    v = v.assign(p_fracture=0.2, evaluable=[0] + [1] * (len(v) - 1))
    v["grade"] = v["grade"].astype(float).where(v["evaluable"] == 1)
    v["type"] = v["type"].where(v["evaluable"] == 1, "")
    path = v["file"].iloc[0]
    csv = tmp_path / "vertebrae.csv"                       # as `vfa predict` writes it and dicom_out reads it
    v.to_csv(csv, index=False, float_format="%.3f")
    table = pd.read_csv(csv)
    rows = pd.DataFrame({"file": [path], "raw": [0.2], "predicted": [0]})
    written = write_outputs(rows, [tmp_path / "ph" / path], tmp_path / "pacs", ModelInfo("t", "0", ["0" * 64]),
                            vertebrae=table)
    sr = tmp_path / "pacs" / written[0]["sr"]
    groups = hd.sr.srread(sr).content.get_planar_roi_measurement_groups()
    assert len(groups) == 13
    ne = {e.name.value: e.value.value for e in groups[0].get_qualitative_evaluations()}
    assert ne == {"GENANT-GRADE": "GENANT-NE"} and groups[0].get_measurements() == []
    assert {e.name.value for e in groups[1].get_qualitative_evaluations()} == {"125605004", "GENANT-GRADE",
                                                                               "VERT-SHAPE"}
    dciodvfy = oracles.dciodvfy()
    for name in (written[0]["sr"], written[0]["sc"]):
        res = subprocess.run([dciodvfy, str(tmp_path / "pacs" / name)], capture_output=True, text=True, timeout=60)
        assert [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")] == []


def test_the_review_app_reads_a_level_not_evaluable(tmp_path):
    from vfa.app.cases import read_vertebrae as app_vertebrae

    pts, lv = spine(2)
    rows = spine_rows("a.png", pts, lv, np.array([0.1, 0.1]), 0.5, np.array([0.9, 0.1]))
    rows.to_csv(tmp_path / "vertebrae.csv", index=False, float_format="%.3f")
    t4, t5 = app_vertebrae(tmp_path / "vertebrae.csv")["a.png"]
    assert (t4["evaluable"], t4["grade"]) == (True, 0)
    assert (t5["evaluable"], t5["grade"], t5["p"]) == (False, None, None)


def test_a_resumed_predict_keeps_an_empty_grade_empty(tmp_path):
    from vfa.inference.vertebra_predict import _keep_bodies_of

    pts, lv = spine(2)
    rows = pd.concat([spine_rows(f, pts, lv, np.array([0.1, 0.1]), 0.5, np.array([0.9, 0.1])) for f in "ab"])
    part = tmp_path / "vertebrae.csv.partial"
    part.write_text(rows.round(3).to_csv(index=False))
    _keep_bodies_of(part, {"a"})       # b's bodies belong to an image whose row was never written
    kept = part.read_text().splitlines()
    assert kept == rows.round(3).to_csv(index=False).splitlines()[:3]
