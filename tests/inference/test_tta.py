"""TTA: the notebook's transform through vfa.augment, per-image seeding, mean/max pooling."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vfa.data.augment import Augment, get_augment_config
from vfa.inference.tta import draw_params, tta_predict


class Tiny(nn.Module):
    """A fixed, position-sensitive scorer, so geometric augmentation changes its output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 5, stride=2)
        self.fc = nn.Linear(4 * 4 * 4, 1)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 4), 1)).squeeze(-1)


class Gray(Dataset):
    """(image, label, index) with gray images replicated to 3 channels, as vfa's eval datasets."""

    def __init__(self, n=7, size=(24, 16)):
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(n, 1, *size, generator=g)
        self.y = torch.arange(n) % 2

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i].expand(3, -1, -1).contiguous(), self.y[i].float(), i


@pytest.fixture(scope="module")
def model():
    return Tiny().eval()


def test_pooling_and_shapes(model):
    res = tta_predict(model, Gray(), 4, seed=0, batch_size=3)
    assert res.raw.shape == (7,) and res.passes.shape == (7, 4)
    np.testing.assert_allclose(res.mean, res.passes.mean(1))
    np.testing.assert_allclose(res.max, res.passes.max(1))
    assert not np.allclose(res.passes[:, 0], res.raw)  # raw is not one of the pooled passes
    np.testing.assert_array_equal(res.index, np.arange(7))
    np.testing.assert_array_equal(res.labels, np.arange(7) % 2)


def test_deterministic_and_independent_of_batching(model):
    a = tta_predict(model, Gray(), 3, seed=5, batch_size=2)
    b = tta_predict(model, DataLoader(Gray(), batch_size=7), 3, seed=5)
    np.testing.assert_allclose(a.passes, b.passes, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.raw, b.raw, rtol=1e-5, atol=1e-6)
    c = tta_predict(model, Gray(), 3, seed=6, batch_size=2)
    assert not np.allclose(a.passes, c.passes)


def test_off_gives_raw_only(model):
    res = tta_predict(model, Gray(), 0)
    assert res.mean is None and res.max is None and res.passes.shape == (7, 0)
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.stack([Gray()[i][0] for i in range(7)]))).numpy()
    np.testing.assert_allclose(res.raw, ref, rtol=1e-5, atol=1e-6)


def test_passes_are_the_augment_transform(model):
    """Pass j of image i is exactly Augment('tta').apply with that image's seeded draw."""
    data = Gray(n=3)
    res = tta_predict(model, data, 2, seed=9, batch_size=3)
    aug = Augment(get_augment_config("tta"))
    x = torch.stack([data[i][0] for i in range(3)])
    for j in range(2):
        params = draw_params(aug, [0, 1, 2], j, 9, (24, 16), 3)
        assert params["theta"].abs().max() <= 20 and ((params["zx"] - 1).abs() <= 0.1).all()
        with torch.no_grad():
            ref = torch.sigmoid(model(aug.apply(x[:, :1], params).contiguous())).numpy()
        np.testing.assert_allclose(res.passes[:, j], ref, rtol=1e-5, atol=1e-6)


def test_keras215_preset_and_temperature(model):
    res = tta_predict(model, Gray(n=4), 2, preset="tta-keras215", batch_size=4)
    assert res.passes.shape == (4, 2) and np.isfinite(res.passes).all()
    model.temperature = 2.0
    try:
        hot = tta_predict(model, Gray(n=4), 0)
    finally:
        del model.temperature
    with torch.no_grad():
        z = model(torch.stack([Gray(n=4)[i][0] for i in range(4)]))
    np.testing.assert_allclose(hot.raw, torch.sigmoid(z / 2).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        tta_predict(model, Gray(), -1)


def test_tta_preset_follows_the_training_augmentation():
    from vfa import config as config_mod
    from vfa.inference.tta import resolve_tta_preset, tta_config

    seed, keras, demo = (config_mod.resolve(p) for p in ("seed2019", "keras215", "cpu-demo"))
    assert [resolve_tta_preset("auto", c) for c in (seed, keras, demo)] == ["tta", "tta-keras215", "train"]
    assert resolve_tta_preset("tta", demo) == "tta"  # an explicit choice is kept
    assert tta_config("train", demo) == get_augment_config(demo.augment, **demo.augment_overrides)
    assert tta_config("auto", demo).rotation == 5.0 and tta_config("auto", seed) == get_augment_config("tta")
    with pytest.raises(config_mod.ConfigError, match="--tta-preset"):
        resolve_tta_preset("mild", demo)


def test_ensemble_members_each_get_their_own_tta(tmp_path):
    from tests.helpers import make_checkpoint
    from vfa import config as config_mod
    from vfa.inference.engine import Scorer
    from vfa.inference.ensemble import load_ensemble

    a = make_checkpoint(tmp_path / "a.ckpt")  # cpu-demo config: its own (milder) augmentation
    ens = load_ensemble([a, a])
    ens.members[1].config = config_mod.resolve("seed")  # as if trained with the notebook's augmentation
    scorer = Scorer(ens, "torch", 4, tta=2)
    assert scorer.tta_preset == "train, tta"
    assert [g.cfg.rotation for g in scorer.augments] == [5.0, 20.0]
