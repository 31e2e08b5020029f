"""data.sampler: the seed's class-balanced upsampling as torch's WeightedRandomSampler, beside class weights."""
import pytest
import torch

from vfa import config as config_mod
from vfa.config import ConfigError
from vfa.training.datamodule import VFADataModule, balanced_sampler
from vfa.data.samples import Samples


def test_balanced_sampler_draws_either_class_equally():
    labels = [0] * 900 + [1] * 100
    idx = list(balanced_sampler(labels, torch.Generator().manual_seed(0)))
    assert len(idx) == len(labels)                                  # the epoch keeps its length
    share = sum(labels[i] for i in idx) / len(idx)
    assert share == pytest.approx(0.5, abs=0.05)                    # 10 % fractures drawn as half


def test_sampler_option_checked():
    assert config_mod.resolve("cpu-demo").data.sampler == "none"   # off by default: demo figures unchanged
    ok = config_mod.resolve("cpu-demo", overrides={"data": {"sampler": "balanced"}, "optim": {"class_weights": False}})
    assert ok.data.sampler == "balanced"
    with pytest.raises(ConfigError, match="class_weights"):        # both would count the fractures twice
        config_mod.resolve("cpu-demo", overrides={"data": {"sampler": "balanced"}})
    with pytest.raises(ConfigError, match="data.sampler"):
        config_mod.resolve("cpu-demo", overrides={"data": {"sampler": "upsample"}})


def test_balanced_loader_is_fixed_by_seed_and_epoch():
    cfg = config_mod.resolve("cpu-demo", overrides={"data": {"sampler": "balanced", "num_workers": 0, "batch_size": 4},
                                                     "optim": {"class_weights": False}})
    labels = [0] * 18 + [1] * 2
    dm = VFADataModule(cfg, Samples([f"{i}.png" for i in range(20)], labels, ""))
    ds = list(range(20))

    def order(epoch):
        dm.start_epoch = epoch
        return [int(i) for batch in dm._loader(ds, shuffle=True) for i in batch]

    first = order(0)
    assert first == order(0) and first != order(1) and len(first) == 20
    assert sum(labels[i] for i in first) >= 4          # 2 fractures of 20 drawn far more often than 1 in 10


@pytest.mark.slow
def test_train_with_the_balanced_sampler(tiny_phantom, tmp_path):
    import vfa
    from tests.helpers import tiny_cfg

    cfg = tiny_cfg(tiny_phantom)
    cfg.data.sampler, cfg.optim.class_weights = "balanced", False
    lines = []
    run = vfa.train(cfg, tmp_path / "run", log=lines.append)
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert any("balanced by the sampler" in line and "weight: 1.000" in line for line in lines)
