"""Grad-CAM: it points where the logit's evidence is; overlays as the notebook; resumable batches; localization."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from tests.helpers import make_checkpoint
from vfa.explain import cam, geometry, heatmaps, localization, render
from vfa.config import ConfigError
from vfa.models.network import VFANet, build_model


class TwoDetectors(nn.Module):
    """A fixed 'backbone' with two feature channels on 4x4 cells: 0 = brightness above 0.6,
    1 = vertical-stripe energy; pooled by the spatial mean as timm's forward_head does."""
    num_features = 2

    def forward_features(self, x):
        g = x[:, :1]
        bright = F.relu(F.avg_pool2d(g, 4) - 0.6)
        stripes = F.avg_pool2d(F.pad((g[..., 1:] - g[..., :-1]).abs(), (0, 1)), 4)
        return torch.cat([bright, stripes], 1)

    def forward_head(self, f):
        return f.mean(dim=(2, 3))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def scene(blob, stripes, size=(64, 48)):
    """Gray 0.3 background, a bright 12x12 blob at `blob` and a 16x16 stripe patch (mean 0.5) at `stripes`."""
    img = np.full(size, 0.3, np.float32)
    (r, c), (sr, sc) = blob, stripes
    img[r:r + 12, c:c + 12] = 0.95
    img[sr:sr + 16, sc:sc + 16] = np.where(np.arange(16) % 2, 0.8, 0.2)[None, :]
    return img


def detector_model(weights):
    model = VFANet(TwoDetectors(), head=()).eval()
    with torch.no_grad():
        model.head[0].weight.copy_(torch.tensor([weights], dtype=torch.float32))
        model.head[0].bias.zero_()
    return model


@pytest.mark.parametrize("method", cam.METHODS)
@pytest.mark.parametrize("blob,stripes", [((8, 8), (40, 24)), ((44, 28), (4, 4)), ((30, 4), (8, 28))])
def test_cam_peaks_where_the_logit_looks(method, blob, stripes):
    img = scene(blob, stripes)
    x = torch.from_numpy(img)[None, None].expand(1, 3, -1, -1)
    blob_box = [blob[1], blob[0], blob[1] + 12, blob[0] + 12]          # x0, y0, x1, y1
    stripe_box = [stripes[1], stripes[0], stripes[1] + 16, stripes[0] + 16]
    for weights, inside, outside in (([1.0, 0.0], blob_box, stripe_box), ([0.0, 1.0], stripe_box, blob_box)):
        model = detector_model(weights)
        cams, logits = cam.grad_cam(model, x, method)
        assert logits == pytest.approx(model(x).detach().numpy(), rel=1e-5)
        heat = geometry.upsample(cams[0], img.shape)
        assert heat.max() == pytest.approx(1.0, abs=1e-6)
        assert localization.localize(heat, [inside])["pointing_hit"], (weights,
                                                                        np.unravel_index(heat.argmax(), heat.shape))
        assert not localization.localize(heat, [outside])["pointing_hit"]
        assert localization.localize(heat, [inside])["mass_in_boxes"] > 0.5


def test_layercam_keeps_only_the_positive_evidence_per_cell():
    # channel 0 (the blob) raises the logit, channel 1 (the stripes) lowers it: Grad-CAM is the
    # clamped weighted sum of both maps, LayerCAM the blob's map alone (its gradient is negative)
    img = scene((8, 8), (40, 24))
    x = torch.from_numpy(img)[None, None].expand(1, 3, -1, -1)
    model = detector_model([1.0, -0.5])
    feats = model.forward_features(x)[0].detach()
    layer, _ = cam.grad_cam(model, x, "layercam")
    np.testing.assert_allclose(layer[0], (feats[0] / feats[0].max()).numpy(), atol=1e-6)
    grad, _ = cam.grad_cam(model, x, "gradcam")
    mixed = (feats[0] - 0.5 * feats[1]).clamp(min=0)
    np.testing.assert_allclose(grad[0], (mixed / mixed.max()).numpy(), atol=1e-6)


def test_cam_settings_come_from_the_model_unless_given():
    from vfa import config as config_mod
    from vfa.models.network import build_from_config

    cfg = config_mod.resolve("cpu-demo")
    model = build_from_config(cfg.model)
    model.config = cfg
    assert cam.cam_settings(model) == ("layercam", "backbone.features.5")      # the preset's
    assert cam.cam_settings(model, "gradcam", "auto") == ("gradcam", "auto")  # explicit wins
    assert cam.cam_settings(model, "hirescam") == ("hirescam", "backbone.features.5")
    model.config = config_mod.resolve("seed")
    assert cam.cam_settings(model) == ("gradcam", "auto")                     # the notebook's
    cfg = config_mod.resolve("cpu-demo", overrides={"model": {"backbone": "resnet18"}})
    model = build_from_config(cfg.model)
    model.config = cfg
    with pytest.warns(UserWarning, match="not in this resnet18"):              # a preset layer elsewhere
        assert cam.cam_settings(model) == ("layercam", "auto")
    with pytest.raises(ConfigError, match="CAM method"):
        cam.cam_settings(model, "smoothgrad")
    with pytest.raises(ConfigError, match="model.cam_method"):
        config_mod.resolve("cpu-demo", overrides={"model": {"cam_method": "smoothgrad"}})


def test_auto_target_is_the_last_feature_map_and_layers_can_be_named():
    torch.manual_seed(0)
    model = build_model("resnet18", head=(8,)).eval()
    x = torch.rand(2, 3, 64, 40)
    auto, z = cam.grad_cam(model, x)
    named, _ = cam.grad_cam(model, x, layer="backbone.layer4")   # resnet's forward_features ends there
    np.testing.assert_allclose(auto, named, atol=1e-6)
    assert auto.shape == (2, 2, 2) and z.shape == (2,)
    early, _ = cam.grad_cam(model, x, layer="backbone.layer3")
    assert early.shape == (2, 4, 3)
    plus, _ = cam.grad_cam(model, x, method="gradcam++")
    assert plus.min() >= 0 and plus.max() <= 1
    with pytest.raises(ConfigError, match="no module named"):
        cam.grad_cam(model, x, layer="backbone.nope")
    assert all(p.grad is None for p in model.parameters())  # only the map's gradient was taken


def test_overlay_is_the_notebooks_blend_and_names_sort_by_prediction():
    from matplotlib import colormaps

    gray = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    heat = np.linspace(1, 0, 12, dtype=np.float32).reshape(3, 4)
    out = render.overlay(gray, heat)
    jet = (colormaps["jet"](np.uint8(255 * heat))[..., :3] * 255).round()
    expected = (0.3 * jet + 0.7 * (gray * 255).round()[..., None]).round()
    assert out.dtype == np.uint8 and out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    assert render.heatmap_name(0.8765, "phantom_00012.png") == "heatmap_087_phantom_00012.png"
    assert render.heatmap_name(0.999, "a.png") == "heatmap_099_a.png"   # int(), as the notebook
    assert render.heatmap_name(1.0, "a.png") == "heatmap_100_a.png"
    assert render.heatmap_name(0.05, "a.png") < render.heatmap_name(0.5, "a.png")


def test_localization_summary_counts_only_fractured_images():
    heat = np.zeros((20, 10), np.float32)
    heat[5, 5] = 1.0
    heat[15, 5] = 0.5
    assert localization.localize(heat, [[4, 4, 7, 7]]) == {"pointing_hit": True, "pointing_hit_tol": True,
                                                  "mass_in_boxes": pytest.approx(1 / 1.5)}
    miss = localization.localize(heat, [[0, 10, 10, 20]])  # max at row 5; box starts at row 10: 5 px away
    assert not miss["pointing_hit"] and miss["pointing_hit_tol"]
    assert localization.localize(heat, [[0, 10, 10, 20]], tolerance=4)["pointing_hit_tol"] is False
    rows = [{"n_boxes": 1, "pointing_hit": True, "mass_in_boxes": 0.5},
            {"n_boxes": 2, "pointing_hit": "False", "mass_in_boxes": "0.25"},
            {"n_boxes": 0, "pointing_hit": "", "mass_in_boxes": ""}]
    s = localization.summarize(rows)
    assert s["n_fractured"] == 2 and s["pointing_game"] == 0.5 and s["mass_in_boxes"] == pytest.approx(0.375)
    lo, hi = s["pointing_game_ci"]
    assert 0 < lo < 0.5 < hi < 1


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("cam") / "m.ckpt")


def test_heatmap_folder_names_resume_and_pointing_game(ckpt, tiny_phantom, tmp_path):
    from vfa.cli import main

    data, out = tiny_phantom / "test", tmp_path / "hm"
    n = len(list(data.rglob("*.png")))
    args = ["heatmap", "--model", str(ckpt), "--data", str(data), "--out", str(out),
            "--manifest", str(tiny_phantom / "manifest.csv")]
    assert main(args + ["--panel"]) == 0
    overlays = sorted(out.rglob("heatmap_*"))
    assert len(overlays) == n and len(list(out.rglob("panel_*"))) == n
    for f in overlays:  # mirrored class folders, heatmap_NNN_original-name
        assert f.parent.name in ("norm", "frac") and re.fullmatch(r"heatmap_\d{3}_phantom_\d+\.png", f.name)
        assert (data / f.parent.name / f.name[12:]).is_file()
        with Image.open(f) as im, Image.open(data / f.parent.name / f.name[12:]) as orig:
            assert im.mode == "RGB" and im.size == orig.size   # on the ORIGINAL image
    table = pd.read_csv(out / "heatmaps.csv")
    assert len(table) == n
    p = table.set_index("file")["p_fracture"]
    for f in overlays:
        assert int(f.name[8:11]) == int(p[f"{f.parent.name}/{f.name[12:]}"] * 100)
    loc = json.loads((out / "localization.json").read_text())
    assert loc["n_fractured"] == int((table["label"] == 1).sum()) > 0
    assert 0 <= loc["pointing_game"] <= 1 and len(loc["pointing_game_ci"]) == 2
    # resumable: nothing to redo; a removed overlay alone is rewritten; --start-index skips outright
    before = {f: f.stat().st_mtime_ns for f in overlays}
    assert main(args + ["--panel"]) == 0
    assert {f: f.stat().st_mtime_ns for f in sorted(out.rglob("heatmap_*"))} == before
    overlays[0].unlink()
    res = heatmaps.write_heatmaps(ckpt, sorted(str(q) for q in data.rglob("*.png")), out, root=data,
                             manifest=tiny_phantom / "manifest.csv", progress=False, log=lambda m: None)
    assert res["written"] == 1 and res["skipped_existing"] == n - 1 and overlays[0].is_file()
    assert {k: res["localization"][k] for k in ("n_fractured", "pointing_hits")} == \
        {k: loc[k] for k in ("n_fractured", "pointing_hits")}   # the kept rows still count
    res = heatmaps.write_heatmaps(ckpt, sorted(str(q) for q in data.rglob("*.png")), tmp_path / "late", root=data,
                             start_index=n - 2, progress=False, log=lambda m: None)
    assert res["written"] == 2 and len(list((tmp_path / "late").rglob("heatmap_*"))) == 2


def test_heatmaps_use_the_models_cam_method_and_layer(tiny_phantom, tmp_path):
    from vfa import config as config_mod
    from vfa.training.module import VFAModule

    cfg = config_mod.resolve("cpu-demo", overrides={"data": {"size": [64, 64]}})
    torch.manual_seed(0)
    path = tmp_path / "small.ckpt"
    torch.save({"state_dict": VFAModule(config_mod.to_dict(cfg)).state_dict(),
                "hyper_parameters": {"config": config_mod.to_dict(cfg)}}, path)
    paths = sorted(str(q) for q in (tiny_phantom / "test" / "frac").glob("*.png"))[:3]
    kw = dict(root=tiny_phantom / "test", manifest=tiny_phantom / "manifest.csv", progress=False, log=lambda m: None)
    loc = heatmaps.write_heatmaps(path, paths, tmp_path / "a", **kw)["localization"]
    assert (loc["method"], loc["layer"], loc["output_stride"]) == ("layercam", "backbone.features.5", 4)
    assert json.loads((tmp_path / "a" / "localization.json").read_text())["layer"] == "backbone.features.5"
    loc = heatmaps.write_heatmaps(path, paths, tmp_path / "b", method="gradcam", layer="auto", **kw)["localization"]
    assert (loc["method"], loc["layer"]) == ("gradcam", "auto")


def test_heatmaps_from_a_predictions_csv_select_false_negatives(ckpt, tiny_phantom, tmp_path):
    from vfa.cli import main

    data = tiny_phantom / "test"
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    frame = pd.DataFrame({"image_id": files, "file": files, "label": [int(f.startswith("frac")) for f in files],
                          "raw": 0.2, "predicted": 0})
    frame.to_csv(tmp_path / "pred.csv", index=False)
    out = tmp_path / "fn"
    assert main(["heatmap", "--model", str(ckpt), "--data", str(data), "--out", str(out), "--predictions",
                 str(tmp_path / "pred.csv"), "--select", "fn"]) == 0
    assert {f.parent.name for f in out.rglob("heatmap_*")} == {"frac"}
    assert len(list(out.rglob("heatmap_*"))) == int(frame["label"].sum())
    assert main(["heatmap", "--model", str(ckpt), "--data", str(data), "--out", str(out), "--select", "fn"]) == 2


def test_evaluate_reports_localization_and_gallery_when_boxes_exist(ckpt, tiny_phantom, tmp_path):
    from vfa.evaluation.evaluate import evaluate

    res = evaluate(ckpt, tiny_phantom / "test", tmp_path / "ev", num_workers=0, progress=False, log=lambda m: None,
                   gallery=2)
    loc = res["localization"]   # the phantom's manifest.csv was found next to test/
    assert loc["n_fractured"] == res["n_frac"] and loc["manifest"].endswith("manifest.csv")
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "Localization (LayerCAM)" in html and "fig-heatmap_gallery" in html   # cpu-demo's method
    assert (tmp_path / "ev" / "heatmap_gallery.png").is_file()
