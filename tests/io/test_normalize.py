import numpy as np
import pytest
from PIL import Image

from vfa.config import ConfigError
from vfa.io import read_image
from vfa.io.normalize import NormalizeError, normalize, parse


def ramp():
    rng = np.random.default_rng(0)
    return (rng.random((40, 30)) * 0.5 + 0.2).astype(np.float32)  # values in [0.2, 0.7]


def test_seed_is_identity():
    img = ramp()
    assert normalize(img, "seed") is not None
    np.testing.assert_array_equal(normalize(img, "seed"), img)
    np.testing.assert_array_equal(normalize(img, None), img)


def test_minmax_spans_unit_range():
    out = normalize(ramp(), "minmax")
    assert out.min() == 0 and out.max() == pytest.approx(1) and out.dtype == np.float32


def test_percentile_window_clips_outliers():
    img = ramp()
    img[0, 0], img[0, 1] = 0.0, 1.0  # outliers
    out = normalize(img, "percentile:1,99")
    lo, hi = np.percentile(img, (1, 99))
    np.testing.assert_allclose(out, np.clip((img - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert parse("percentile") == ("percentile", (1.0, 99.0))


def test_equalize_flattens_the_histogram_and_keeps_order():
    img = ramp() ** 3  # skewed
    out = normalize(img, "equalize")
    order = np.argsort(img.ravel())
    assert np.all(np.diff(out.ravel()[order]) >= -1e-7)  # monotonic
    hist, _ = np.histogram(out, bins=4, range=(0, 1))
    assert hist.min() > 0.15 * out.size  # close to uniform (each quarter ~25 %)
    assert out.min() == 0 and out.max() == pytest.approx(1)


@pytest.mark.parametrize("mode", ["minmax", "percentile", "equalize"])
def test_constant_image_becomes_zeros(mode):
    out = normalize(np.full((5, 5), 0.4, np.float32), mode)
    assert not np.isnan(out).any() and (out == 0).all()


@pytest.mark.parametrize("spec", ["bogus", "percentile:99,1", "percentile:5", "equalize:1", "minmax:3",
                                  "percentile:a,b"])
def test_bad_values_are_config_errors(spec):
    with pytest.raises(NormalizeError) as info:
        parse(spec)
    assert isinstance(info.value, ConfigError)


def test_read_image_applies_normalization(tmp_path):
    arr = np.array([[50, 100], [150, 200]], np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), arr / 255, atol=1e-7)
    np.testing.assert_allclose(read_image(tmp_path / "a.png", normalize="minmax"), (arr - 50) / 150, atol=1e-6)


def test_normalize_travels_in_the_config_to_datasets(folder):
    """data.normalize reaches every ImageDataset built from a config, as evaluate/predict build them."""
    import torch

    from vfa import config as config_mod
    from vfa.training.datamodule import VFADataModule
    from vfa.data.samples import scan_folder

    cfg = config_mod.resolve("cpu-demo", overrides={"data": {"normalize": "minmax", "size": [48, 32]}})
    assert config_mod.from_dict(config_mod.to_dict(cfg)).data.normalize == "minmax"
    ds = VFADataModule(cfg).eval_dataset(scan_folder(folder))
    x, _, _ = ds[0]
    assert ds.transform.spec.normalize == "minmax" and float(x.min()) == pytest.approx(0, abs=1e-6)
    assert float(x.max()) == pytest.approx(1, abs=1e-3) and torch.equal(x[0], x[1])
