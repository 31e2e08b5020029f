import pytest

from vfa import config as c


def test_presets_resolve_and_roundtrip(tmp_path):
    for name in c.PRESETS:
        cfg = c.resolve(name)
        assert c.from_dict(c.to_dict(cfg)) == cfg
    seed = c.resolve("seed2019")
    assert seed.model.backbone == "inception_resnet_v2" and seed.data.size == (600, 360)
    assert seed.data.batch_size == 12 and seed.optim.lr == 1e-4 and seed.optim.epochs == 10
    assert seed.optim.class_weights and seed.optim.sgdr and seed.augment == "seed"
    k = c.resolve("keras215")
    assert k.augment == "keras215" and k.model.init == "keras"


def test_overrides_file_and_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.01\nmodel:\n  head: [512, 128]\n")
    cfg = c.resolve("cpu-demo", f, c.parse_set(["optim.epochs=3", "data.size=[64,48]", "trainer.devices=2"]))
    assert cfg.optim.lr == 0.01 and cfg.model.head == (512, 128) and cfg.optim.epochs == 3
    assert cfg.data.size == (64, 48) and cfg.trainer.devices == 2
    assert c.from_dict(__import__("yaml").safe_load(c.dump(cfg))) == cfg


def test_errors_name_the_problem():
    with pytest.raises(c.ConfigError, match="unknown preset 'nope'"):
        c.resolve("nope")
    with pytest.raises(c.ConfigError, match="optim.lrr"):
        c.resolve("seed", overrides={"optim": {"lrr": 1}})
    with pytest.raises(c.ConfigError, match="key=value"):
        c.parse_set(["optim.lr"])
    with pytest.raises(FileNotFoundError):
        c.resolve("seed", "/nonexistent.yaml")


def test_numbers_in_yaml_exponent_form_are_floats():
    cfg = c.resolve("seed", overrides=c.parse_set(["optim.lr=1e-3"]))
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    with pytest.raises(c.ConfigError, match="optim.lr must be a number"):
        c.resolve("seed", overrides=c.parse_set(["optim.lr=fast"]))


def test_bad_augmentation_and_sizes_fail_at_resolution():
    with pytest.raises(c.ConfigError, match="augment: unknown augmentation option"):
        c.resolve("seed", overrides=c.parse_set(["augment_overrides={rotation:5}"]))
    with pytest.raises(c.ConfigError, match="unknown augmentation preset"):
        c.resolve("seed", overrides={"augment": "wild"})
    with pytest.raises(c.ConfigError, match="data.size"):
        c.resolve("seed", overrides=c.parse_set(["data.size=[8,8]"]))
    cfg = c.resolve("seed", overrides=c.parse_set(["augment_overrides={rotation: 5}"]))
    assert cfg.augment_overrides == {"rotation": 5}
