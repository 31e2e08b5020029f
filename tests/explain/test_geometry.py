"""Where Grad-CAM maps come from: finer maps from the same weights, measured cell centres, placement."""
import numpy as np
import pytest
import torch

from vfa.explain import geometry as cam
from vfa.explain.cam import grad_cam
from vfa.config import ConfigError
from vfa.models.network import build_model


def _small_cnn_model(stride=None, size=(128, 96)):
    from vfa import config as config_mod
    from vfa.models.network import build_from_config

    cfg = config_mod.resolve("cpu-demo", overrides={"data": {"size": list(size)}})
    cfg.model.cam_output_stride = stride
    torch.manual_seed(0)
    model = build_from_config(cfg.model).eval()
    model.config = cfg
    return model


@pytest.mark.parametrize("backbone,stride,centre,step", [
    ("vfa_cnn_small", 8, 15, 8),  # conv s2 (centre 2i) + 4 max pools of 2 (each +half a window): 8 i + 15
    ("resnet18", None, 0, 32),    # odd kernels, symmetric padding: 32 i, not the half-cell grid's 32 i + 15.5
])
def test_cell_centres_match_the_network_geometry(backbone, stride, centre, step):
    model = _small_cnn_model(size=(384, 288))  # receptive fields (ResNet-18: 435 px) fit the probe canvas
    if backbone != "vfa_cnn_small":
        torch.manual_seed(0)
        config = model.config
        model = build_model(backbone, head=(8,)).eval()
        model.config = config
    oy, sy, ox, sx = cam.cell_centres(cam.dense_model(model, stride))
    assert sy == pytest.approx(step, abs=0.05) and sx == pytest.approx(step, abs=0.05)  # the half-cell grid
    # would give centre step/2 - 0.5 instead
    assert oy == pytest.approx(centre, abs=0.5) and ox == pytest.approx(centre, abs=0.5)


def test_token_maps_and_sizes_that_break_equivalence_fall_back_or_refuse():
    from vfa.models.network import build_from_config

    model = _small_cnn_model(size=(136, 104))  # not a multiple of 32: a strided pool drops a row
    with pytest.raises(ConfigError, match="does not reproduce"):
        cam.dense_model(model, 8)
    cfg = model.config
    cfg.model.backbone, cfg.model.backbone_kwargs = "vit_tiny_patch16_224", {"img_size": (128, 96)}
    cfg.data.size = (128, 96)
    vit = build_from_config(cfg.model).eval()
    vit.config = cfg
    assert cam.cell_centres(vit) is None  # tokens: the half-cell grid
    net, used, centres = cam.cam_network(vit, 0)
    assert net is vit and used is None and centres is None


def test_upsample_puts_a_cell_where_its_centre_is():
    heat = np.zeros((4, 3), np.float32)
    heat[2, 1] = 1.0
    plain = cam.upsample(heat, (80, 60))  # half-cell grid: cell (2, 1) centred on (50, 30) - 0.5
    assert np.unravel_index(plain.argmax(), plain.shape) in {(49, 29), (50, 30), (49, 30), (50, 29)}
    # cells centred at 5 + 10 i on a 40x30 input, which was a 2x downsampling of the 80x60 original
    moved = cam.upsample(heat, (80, 60), centres=(5, 10, 5, 10), input_size=(40, 30))
    r, c = np.unravel_index(moved.argmax(), moved.shape)
    assert (r, c) in {(50, 30), (51, 31), (50, 31), (51, 30)}  # (5 + 20 + 0.5) * 2 - 0.5 = 50.5
    assert moved[0, 0] == moved[0, 1]  # constant beyond the outermost cells


def test_output_stride_from_config_explicit_and_refused():
    model = _small_cnn_model(stride=4)
    net, used, centres = cam.cam_network(model)
    assert used == 4 and net is not model and centres[1] == pytest.approx(4, abs=0.3)
    assert cam.cam_network(model, 0)[:2] == (model, None)
    x = torch.rand(1, 3, 128, 96)
    maps, logits = grad_cam(net, x)
    assert maps.shape == (1, 32, 24)
    torch.manual_seed(0)
    other = build_model("resnet18", head=(8,)).eval()
    other.config = model.config
    with pytest.raises(ConfigError, match="output-stride 4"):
        cam.cam_network(other, 4)
    with pytest.warns(UserWarning, match="own last feature map"):  # the config's default: fall back
        assert cam.cam_network(other)[1] is None
