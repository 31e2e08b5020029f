"""Scan orientation (vfa.inference.orientation): a right-facing spine is found and read mirrored, its
points mirrored back. The header rules on hand-written DICOMs; the reading on a phantom image and
its mirror with a stub model that, like a detector trained on the phantom, finds only left-facing
spines (how reliably a trained detector tells the two apart is measured in docs/vertebrae.md)."""
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from vfa import config as config_mod
from vfa.data.transforms import create_transform
from vfa.inference.orientation import facing, header_facing, image_facing, mirror_points
from vfa.inference.vertebra import detect, read_spines
from vfa.io.dicom import write_dicom
from vfa.phantom.synth import render_phantom
from vfa.spine import LEVELS, POINT_COLUMNS

FILE = (400, 240)       # the phantom file (H, W); the model works at 320 x 192, so points are rescaled
WORK = (320, 192)


def dicom(path, **tags):
    write_dicom(path, np.zeros((64, 40), np.uint8), patient_id="ORIENT")
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path


@pytest.mark.parametrize("tags, side", [
    ({"PatientOrientation": ["A", "F"]}, "right"),     # columns increase anteriorly: anterior on the right
    ({"PatientOrientation": ["P", "F"]}, "left"),
    ({"PatientOrientation": ["AF", "F"]}, "right"),    # an oblique row counts by its A
    ({"PatientOrientation": ["H", "P"]}, None),        # a row with neither A nor P says nothing
    ({"ImageOrientationPatient": [0, -1, 0, 0, 0, -1]}, "right"),   # the row runs anteriorly (-y in LPS)
    ({"ImageOrientationPatient": [0.2, 0.98, 0, 0, 0, -1]}, "left"),
    ({"ImageOrientationPatient": [1, 0, 0, 0, 0, -1]}, None),       # a row left-right: not a lateral view
    ({}, None),
])
def test_header_facing(tmp_path, tags, side):
    assert header_facing(dicom(tmp_path / "a.dcm", **tags)) == side


def test_header_facing_of_a_png_is_unknown(tmp_path):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "a.png")
    assert header_facing(tmp_path / "a.png") is None


def test_patient_orientation_wins_over_image_orientation(tmp_path):
    path = dicom(tmp_path / "a.dcm", PatientOrientation=["A", "F"], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    assert header_facing(path) == "right"


def test_config_refuses_an_unknown_orientation():
    with pytest.raises(config_mod.ConfigError, match="vertebra.orientation"):
        config_mod.resolve("vertebra-demo", None, {"vertebra": {"orientation": "up"}})


# ------------------------------------------------------------------ reading with a stub model


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A phantom image (anterior on the left) with a 30 % wedge at T12, and its horizontal mirror."""
    root = tmp_path_factory.mktemp("orient")
    img, ann = render_phantom(np.random.default_rng(5), FILE, [dict(level="T12", grade=2, type="wedge",
                                                                   height_loss=0.3)])
    Image.fromarray(img).save(root / "left.png")
    Image.fromarray(np.ascontiguousarray(img[:, ::-1])).save(root / "right.png")
    points = np.array([ann["points"][lv] for lv in LEVELS])        # (13, 6, 2) file px
    return root, points


class KnowsOneSide(nn.Module):
    """A detector that finds the phantom's bodies only as drawn (anterior on the left) and nothing
    in any other image, as a detector trained on left-facing spines keeps few bodies of a mirrored
    one. Heat logit 4 at each true centre's cell (stride 4), its sub-cell offset, level logit 8."""
    stride = 4

    def __init__(self, native: torch.Tensor, centres: np.ndarray, size):
        super().__init__()
        self.native = F.interpolate(native, size=size, mode="bilinear", antialias=True, align_corners=False)
        h, w = size[0] // 4, size[1] // 4
        cells = torch.as_tensor(centres, dtype=torch.float32) * torch.tensor([size[1] / native.shape[-1],
                                                                               size[0] / native.shape[-2]]) / 4
        self.maps = {"heat": torch.full((1, h, w), -6.0), "offset": torch.zeros(2, h, w),
                     "level": torch.zeros(len(LEVELS), h, w)}
        for lv, (x, y) in enumerate(cells.tolist()):
            r, c = int(y), int(x)
            self.maps["heat"][0, r, c] = 4.0
            self.maps["offset"][:, r, c] = torch.tensor([x - c, y - r])
            self.maps["level"][lv, r, c] = 8.0
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        known = torch.tensor([torch.allclose(xi, self.native[0], atol=1e-3) for xi in x])
        out = {}
        for key, value in self.maps.items():
            empty = torch.full_like(value, -6.0) if key == "heat" else torch.zeros_like(value)
            out[key] = torch.stack([value if k else empty for k in known])
        return out


class WedgeReader(nn.Module):
    """A landmark network that reads every crop as a 30 % anterior wedge, anterior wall on the crop's
    left (where the phantom's crops have it): heights 0.21, 0.25 and 0.3 of the crop at the anterior
    wall, the middle and the posterior wall, centred on the crop (so the second pass keeps the frame)."""

    def forward(self, crops):
        q = torch.tensor([[-0.2, -0.105], [0.0, -0.125], [0.2, -0.15], [-0.2, 0.105], [0.0, 0.125], [0.2, 0.15]])
        return q.expand(len(crops), 6, 2).clone(), torch.full((len(crops),), -3.0)


class Stub(nn.Module):
    def __init__(self, cfg, detector, landmarks):
        super().__init__()
        self.config, self.detector, self.landmarks = cfg, detector, landmarks
        self.anchor = nn.Parameter(torch.zeros(1))      # read_spines takes the device from a parameter


def stub_model(root, points, orientation="auto"):
    cfg = config_mod.resolve("vertebra-demo", None, {"data": {"size": list(WORK)}, "vertebra": {
        "detector_size": list(WORK), "crop_size": 32, "orientation": orientation}})
    native, scale = create_transform(cfg, channels=1).load_scaled(root / "left.png")
    centres = points.mean(1) * scale.numpy()                       # working px
    return Stub(cfg, KnowsOneSide(native[None], centres, WORK), WedgeReader()).eval()


def table(rows):
    return rows[list(POINT_COLUMNS)].to_numpy(dtype=float).reshape(-1, 6, 2)


def test_a_mirrored_phantom_reads_as_the_phantom_with_mirrored_points(phantom):
    root, points = phantom
    model = stub_model(root, points)
    left, right = read_spines(model, [str(root / "left.png"), str(root / "right.png")])
    assert list(left["level"]) == list(right["level"]) == list(LEVELS)
    assert list(left["grade"]) == list(right["grade"]) and set(left["grade"]) == {2}
    np.testing.assert_allclose(left["wedge_ratio"], 0.7, atol=1e-4)
    np.testing.assert_allclose(right["wedge_ratio"], left["wedge_ratio"], atol=1e-6)
    # the mirror's points are the phantom's mirrored (x -> 240 - x), each body at its true place
    np.testing.assert_allclose(mirror_points(table(right), FILE[1]), table(left), atol=1e-3)
    assert np.abs(table(left).mean(1) - points.mean(1)).max() < 1e-3
    # anterior points lie on the anterior side of each image: left in the phantom, right in its mirror
    assert (left["sup_ant_x"] < left["sup_post_x"]).all() and (right["sup_ant_x"] > right["sup_post_x"]).all()


def test_the_mirror_read_as_it_is_finds_nothing_and_forcing_right_mirrors_every_image(phantom):
    root, points = phantom
    as_is = read_spines(stub_model(root, points, "left"), [str(root / "left.png"), str(root / "right.png")])
    assert len(as_is[0]) == 13 and len(as_is[1]) == 0
    mirrored = read_spines(stub_model(root, points, "right"), [str(root / "left.png"), str(root / "right.png")])
    assert len(mirrored[0]) == 0 and len(mirrored[1]) == 13


def test_facing_asks_the_header_first_and_the_image_only_when_it_is_silent(phantom, tmp_path):
    root, points = phantom
    model = stub_model(root, points)
    img = np.asarray(Image.open(root / "left.png"))
    stated = write_dicom(tmp_path / "stated.dcm", img, patient_id="ORIENT")
    ds = pydicom.dcmread(stated)
    ds.PatientOrientation = ["A", "F"]        # the header says right although the pixels face left
    ds.save_as(stated)
    silent = write_dicom(tmp_path / "silent.dcm", img, patient_id="ORIENT")
    transform = create_transform(model.config, channels=1)
    batch = torch.stack([transform.load_scaled(p)[0] for p in (stated, silent)])
    vcfg = model.config.vertebra
    assert facing(model, [stated, silent], batch, vcfg, detect) == ["right", "left"]
    # only the silent file went to the detector: once as it is, once mirrored
    assert model.detector.calls == 2
    model.detector.calls = 0
    vcfg.orientation = "left"
    assert facing(model, [stated, silent], batch, vcfg, detect) == ["left", "left"] and model.detector.calls == 0


def test_image_facing_keeps_an_image_as_it_is_when_nothing_is_found_either_way(phantom):
    root, points = phantom
    model = stub_model(root, points)
    blank = torch.zeros(2, 1, *WORK)
    assert image_facing(model, blank, model.config.vertebra, detect) == ["left", "left"]


def test_a_tie_in_kept_bodies_goes_to_the_detector_peaks(phantom):
    root, points = phantom
    model = stub_model(root, points)
    transform = create_transform(model.config, channels=1)
    batch = torch.stack([transform.load_scaled(root / name)[0] for name in ("left.png", "right.png")])
    three_each_way = lambda m, x, v: [(np.zeros((3, 2)), np.arange(3))] * len(x)   # noqa: E731
    assert image_facing(model, batch, model.config.vertebra, three_each_way) == ["left", "right"]


def test_mirror_points_by_hand():
    pts = np.array([[[0.5, 3.0], [239.5, 7.0]]])
    out = mirror_points(pts, 240)
    assert out.tolist() == [[[239.5, 3.0], [0.5, 7.0]]] and pts[0, 0, 0] == 0.5    # the input is kept
