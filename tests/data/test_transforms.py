"""The one preprocessing path: every entry point gives the same tensor for the same file and config."""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import write_folder
from vfa import checkpoint
from vfa.models.loading import load_model
from vfa import config as config_mod
from vfa.data.dataset import create_dataset
from vfa.data.samples import scan_folder
from vfa.data.transforms import create_transform, resolve_data_config
from vfa.io import read_image
from vfa.models.network import build_from_config

# a config whose every preprocessing choice differs from the plain defaults
SETS = ["data.size=[48,32]", "data.normalize=percentile:5,95", "augment=keras215", "model.backbone=resnet18",
        "model.head=[8]", "data.num_workers=0", "data.batch_size=2", "model.cam_method=gradcam"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tf")
    data = write_folder(root / "data", n_per_class=2, size=(50, 30))
    cfg = config_mod.resolve("seed", overrides=config_mod.parse_set(SETS))
    path = checkpoint.save(root / "m.ckpt", build_from_config(cfg.model), cfg)
    return {"cfg": cfg, "ckpt": path, "samples": scan_folder(data), "root": root}


def reference(cfg, path) -> torch.Tensor:
    """Written out by hand: read, normalize, nearest resize (keras215), three channels."""
    from vfa.data.augment import resize

    gray = torch.from_numpy(read_image(path, None, "percentile:5,95"))[None]
    return resize(gray, (48, 32), "nearest").expand(3, -1, -1)


def test_every_entry_point_builds_the_same_tensor(setup):
    from vfa.data.preview import resolve as preview_resolve
    from vfa.inference.export import calibration_batch
    from vfa.training.datamodule import VFADataModule

    cfg, samples = setup["cfg"], setup["samples"]
    model = load_model(setup["ckpt"])
    path = samples.paths[0]
    want = reference(cfg, path)
    from vfa.data.augment import resize

    plain = resize(torch.from_numpy(read_image(path))[None], (48, 32), "bilinear").expand(3, -1, -1)
    assert not torch.allclose(want, plain, atol=1e-3)  # the config's choices change the tensor
    got = {
        "train (validation loader)": VFADataModule(cfg).eval_dataset(samples)[0][0],
        "train (device augmentation, before augmenting)": VFADataModule(cfg).eval_dataset(samples, 1)[0][0]
        .expand(3, -1, -1),
        "evaluate / predict / calibrate": create_dataset(model, samples.paths)[0][0],
        "heatmap": create_transform(model)(path),
        "lr-find (augmentation off)": create_dataset(config_mod.resolve("seed", overrides=config_mod.parse_set(
            SETS + ["augment=none", "augment_overrides={resize: nearest}"])), samples, train=True)[0][0],
        "export calibration": calibration_batch(model, [path])[0],
    }
    for name, x in got.items():
        assert torch.equal(x, want), name
    # the augmentation preview of a training preset reads as that preset's config says
    _, spec = preview_resolve("keras215", (48, 32))
    assert spec.resize == "nearest" and spec.normalize == config_mod.resolve("keras215").data.normalize


def test_heatmaps_draw_on_the_image_as_the_model_reads_it(setup):
    model = load_model(setup["ckpt"])
    path = setup["samples"].paths[0]
    drawn = create_transform(model).read(path)
    assert np.array_equal(drawn, read_image(path, None, "percentile:5,95"))
    assert not np.array_equal(drawn, read_image(path))


def test_lr_find_and_preview_honour_normalize_and_frame(setup, tmp_path):
    """Two of the defects the one factory fixed: lr-find and augment-preview read without data.normalize."""
    cfg = setup["cfg"]
    ds = create_dataset(cfg, setup["samples"], train=True)
    assert ds.transform.spec == resolve_data_config(cfg)
    assert ds.transform.spec.normalize == "percentile:5,95" and ds.transform.augment is not None


def test_multi_frame_files_follow_data_frame(tmp_path):
    frames = [Image.fromarray(np.full((40, 32), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "m.tif", save_all=True, append_images=frames[1:])
    cfg = config_mod.resolve("seed", overrides=config_mod.parse_set(["data.size=[40,32]", "data.frame=1"]))
    x = create_transform(cfg)(tmp_path / "m.tif")
    assert float(x.mean()) == pytest.approx(200 / 255, abs=1e-6)
