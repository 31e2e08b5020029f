"""LR range test: the sweep, smoothing, early stop and suggestion; the model it starts from is never changed."""
import hashlib
import json

import lightning as L
import numpy as np
import pytest
import torch

from tests.helpers import write_folder
from tests.helpers import make_checkpoint
from vfa import config as config_mod
from vfa.training.lr_find import flat_warning, lr_find, range_test, schedule, smooth, suggest

DESCENT = (1e-5, 1e-2)  # where the synthetic loss falls


def synthetic_loss(lr: float) -> float:
    """Flat at 1 below 1e-5, falling linearly in log10(lr) to 0.2 at 1e-2, flat to 1e-1, then exploding."""
    t = np.log10(lr)
    if t < -5:
        return 1.0
    if t < -2:
        return 1.0 - 0.8 * (t + 5) / 3
    return 0.2 if t < -1 else 0.2 * 10 ** (3 * (t + 1))


class LossOfTheRate(L.LightningModule):
    """Its training loss is synthetic_loss(current rate) plus noise: a known LR-loss curve."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.rng = np.random.default_rng(0)

    def training_step(self, batch, batch_idx):
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        return self.w.sum() * 0 + synthetic_loss(lr) * (1 + 0.05 * self.rng.standard_normal())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def loader(n=8):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(n, 1)), batch_size=1)


def test_schedule_is_exponential_and_the_notebooks_form():
    s = schedule(1e-7, 1.0, 100)
    assert s[0] == pytest.approx(1e-7) and s[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(np.diff(np.log10(s)), 7 / 99)
    nb = schedule(1e-10, 1.0, 50, endpoint=False)   # the notebook's lr_finder_sched(50)
    np.testing.assert_allclose(nb, 1e-10 * 10 ** np.arange(0, 10, 10 / 50))


def test_suggestion_lands_in_the_descent_of_a_synthetic_curve():
    lrs = schedule(1e-7, 1.0, 100)
    rng = np.random.default_rng(1)
    loss = np.array([synthetic_loss(x) for x in lrs]) * (1 + 0.05 * rng.standard_normal(100))
    s = suggest(lrs, smooth(loss, 0.9))
    assert DESCENT[0] < s < DESCENT[1]
    assert smooth([2.0, 2.0, 2.0], 0.98) == pytest.approx([2.0, 2.0, 2.0])   # bias-corrected
    assert suggest(lrs[:2], loss[:2]) is None
    assert flat_warning(smooth(loss, 0.9)) is None
    flat = 1 + 0.02 * rng.standard_normal(100)          # a loss that never falls: say so
    assert "no clear descent" in flat_warning(smooth(flat, 0.9))


@pytest.mark.parametrize("per_epoch", [False, True])
def test_range_test_on_lightning_sets_rates_stops_on_divergence_and_suggests(per_epoch):
    module = LossOfTheRate()
    lrs = schedule(1e-7, 10.0, 60, endpoint=not per_epoch)
    res = range_test(module, loader(2 if per_epoch else 8), lrs, per_epoch=per_epoch,
                     beta=0.5 if per_epoch else 0.9, accelerator="cpu")
    assert res["stopped_early"] and res["done"] < 60                  # the loss exploded past 1e-1
    assert res["lr"] == pytest.approx(lrs[:res["done"]].tolist())      # one rate per step / per epoch
    assert max(res["lr"]) > 1e-1
    assert DESCENT[0] < res["suggested_lr"] < DESCENT[1]
    assert module._trainer is None  # the sweep trained a copy, never the module passed in


def test_lr_find_leaves_the_checkpoint_and_model_byte_identical(tmp_path):
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    from vfa.inference.predict import load_model

    model = load_model(ckpt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = model.config
    config_mod.merge_into(cfg, {"data": {"batch_size": 4, "num_workers": 0}, "trainer": {"progress": False}})
    data = write_folder(tmp_path / "train", n_per_class=4, size=(40, 24))
    res = lr_find(cfg, data, tmp_path / "lr", model=model, steps=6, progress=False, log=lambda m: None)
    res2 = lr_find(cfg, data, tmp_path / "lr2", model=ckpt, steps=6, progress=False, log=lambda m: None)
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == digest
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert res["loss"] == pytest.approx(res2["loss"])   # same start, same seed: same sweep
    saved = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert saved["done"] == 6 and len(saved["lr"]) == 6 and "suggested_lr" in saved
    assert (tmp_path / "lr" / "lr_find.png").stat().st_size > 1000
    assert (tmp_path / "lr" / "lr_find.csv").read_text().startswith("lr,loss,smoothed_loss\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr", "lr2", "m.ckpt", "train"]  # nothing else written
    with pytest.raises(FileExistsError):
        lr_find(cfg, data, tmp_path / "lr", model=model, steps=6, progress=False, log=lambda m: None)
