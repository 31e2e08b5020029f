"""Per-vertebra training runs the image family's plumbing (vfa.training.train.fit): the leakage check
and skipped lists, optim.class_weights (over bodies), --init (of its own family only), the
augmentation preset (points moved with the image), curves and loggers, per-rank seeds."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from vfa import checkpoint
from vfa import config as config_mod
from vfa.data.augment import Augment, apply_affine, warp_points
from vfa.data.samples import DataError
from vfa.training.module import keep_history_before
from vfa.training.train import load_init, positive_weight, train
from vfa.training.vertebra import HISTORY_KEYS, VertebraDataModule, VertebraModule, load_vertebra_data, \
    train_vertebrae

from tests.helpers import make_checkpoint

TINY = ["data.size=[160,96]", "vertebra.detector_size=[96,56]", "vertebra.crop_size=32",
        "vertebra.detector_backbone=resnet10t", "vertebra.landmark_backbone=resnet10t", "vertebra.width=16",
        "data.batch_size=4", "data.num_workers=0", "trainer.logger=none", "trainer.progress=false",
        "trainer.precision=32-true", "optim.epochs=1"]


def manifest(phantom, out, extra_train=(), extra_val=()):
    """The phantom's manifest with absolute paths (so it may live elsewhere) plus extra rows."""
    m = pd.read_csv(phantom / "manifest.csv")[["filename", "split", "label", "patient_id"]]
    m["filename"] = [str(phantom / f) for f in m["filename"]]
    rows = [dict(filename=str(f), split=s, label=0, patient_id=f"X{i}")
            for i, (f, s) in enumerate([(f, "train") for f in extra_train] + [(f, "val") for f in extra_val])]
    pd.concat([m, pd.DataFrame(rows)]).to_csv(out, index=False)
    return out


def vcfg(phantom, source, *sets):
    over = config_mod.parse_set([*TINY, *sets])
    over = config_mod.merged_dict(over, {"data": {"train": f"{source}:train", "val": f"{source}:val"},
                                         "vertebra": {"table": str(phantom / "vertebrae.csv")}})
    return config_mod.resolve("vertebra-demo", overrides=over)


@pytest.fixture(scope="module")
def run(tiny_phantom, tmp_path_factory):
    """One epoch with a csv logger, class weights off and a broken training file skipped."""
    root = tmp_path_factory.mktemp("parity")
    broken = root / "broken.png"
    broken.write_bytes(b"not a png")
    source = manifest(tiny_phantom, root / "m.csv", extra_train=[broken])
    cfg = vcfg(tiny_phantom, source, "trainer.logger=csv", "trainer.log_every_n_steps=2", "optim.class_weights=false",
               "data.on_bad_file=skip")
    return train_vertebrae(cfg, root / "run", log=lambda m: None), broken


def test_a_file_in_two_splits_is_refused_before_the_run_folder_is_made(tiny_phantom, tmp_path):
    m = pd.read_csv(tiny_phantom / "manifest.csv")
    twice = tiny_phantom / m.loc[m["split"] == "train", "filename"].iloc[0]
    cfg = vcfg(tiny_phantom, manifest(tiny_phantom, tmp_path / "m.csv", extra_val=[twice]))
    with pytest.raises(DataError, match="leakage") as err:
        train_vertebrae(cfg, tmp_path / "run", log=lambda m: None)
    assert twice.name in str(err.value) and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_class_weights_weigh_the_training_bodies_and_off_is_one(tiny_phantom, tmp_path, run):
    cfg = vcfg(tiny_phantom, manifest(tiny_phantom, tmp_path / "m.csv"))
    data = load_vertebra_data(cfg, log=lambda m: None)
    # oracle: the table's rows of the training split, counted directly
    table, m = pd.read_csv(tiny_phantom / "vertebrae.csv"), pd.read_csv(tiny_phantom / "manifest.csv")
    grades = table[table["filename"].isin(m.loc[m["split"] == "train", "filename"])]["grade"]
    assert positive_weight(cfg, data) == pytest.approx((grades == 0).sum() / (grades > 0).sum())
    cfg.optim.class_weights = False
    assert positive_weight(cfg, data) == 1.0
    # the run trained with optim.class_weights=false: its loss weighed fractured bodies 1
    ckpt = checkpoint.load(run[0] / "checkpoints" / "last.ckpt")
    assert ckpt["hyper_parameters"]["pos_weight"] == 1.0 and float(ckpt["state_dict"]["pos_weight"]) == 1.0


def test_no_fractured_body_is_refused_with_class_weights(tiny_phantom, tmp_path):
    cfg = vcfg(tiny_phantom, manifest(tiny_phantom, tmp_path / "m.csv"))
    data = load_vertebra_data(cfg, log=lambda m: None)
    data = type(data)(data.train, data.val, [0] * len(data.weighed), data.unit, data.truth)
    with pytest.raises(DataError, match="fractured body"):
        positive_weight(cfg, data)


@pytest.mark.slow
def test_run_writes_curves_loggers_and_skipped_lists(run):
    run_dir, broken = run
    history = pd.read_csv(run_dir / "history.csv")
    assert tuple(history.columns) == HISTORY_KEYS and list(history["epoch"]) == [0]
    for name in ("curves_metrics.png", "curves_loss.png"):
        assert (run_dir / name).stat().st_size > 1000, name
    logged = pd.read_csv(next((run_dir / "logs" / "csv").glob("version_*/metrics.csv")))
    assert {"loss", "loss_points", "loss_fracture", "val_loss", "val_point_error"} <= set(logged.columns)
    skipped = pd.read_csv(run_dir / "skipped_train.csv")
    assert list(skipped["file"]) == [str(broken)] and not (run_dir / "skipped_val.csv").exists()


def test_init_refuses_a_checkpoint_of_the_other_family(tiny_phantom, tmp_path):
    cfg = vcfg(tiny_phantom, "unused.csv", f"model.init_from={make_checkpoint(tmp_path / 'image.ckpt')}")
    with pytest.raises(config_mod.ConfigError) as err:
        train_vertebrae(cfg, tmp_path / "run", log=lambda m: None)
    message = str(err.value)
    assert "\n" not in message and "model.family image" in message and "model.family vertebra" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_init_takes_a_vertebra_checkpoint_and_an_image_run_refuses_it(tiny_phantom, tmp_path, run):
    ckpt = run[0] / "checkpoints" / "last.ckpt"
    cfg = vcfg(tiny_phantom, "unused.csv", f"model.init_from={ckpt}", "vertebra.landmark_backbone=resnet18")
    weights = load_init(cfg, log=lambda m: None)
    assert cfg.vertebra.landmark_backbone == "resnet10t"   # the checkpoint's architecture, not the config's
    module = VertebraModule(config_mod.to_dict(cfg))
    module.model.load_state_dict(weights)
    saved = checkpoint.load(ckpt)["state_dict"]
    assert all(torch.equal(v, saved[f"model.{k}"]) for k, v in module.model.state_dict().items())
    image = config_mod.resolve("cpu-demo", overrides={"model": {"init_from": str(ckpt)}})
    with pytest.raises(config_mod.ConfigError, match="holds a model.family vertebra model"):
        train(image, tmp_path / "image-run", log=lambda m: None)


def test_augment_on_device_is_refused(tiny_phantom, tmp_path):
    cfg = vcfg(tiny_phantom, "unused.csv", "data.augment_on=device")
    with pytest.raises(config_mod.ConfigError, match="six points"):
        train_vertebrae(cfg, tmp_path / "run", log=lambda m: None)


def test_warp_points_follows_the_image():
    """Oracle: a bright dot drawn at a point, warped by Augment, is found where warp_points says."""
    h, w = 64, 40
    aug = Augment("seed")
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        params = aug.draw(g, size=(h, w), channels=1)
        x, y = 18.5, 30.5   # a pixel centre, corner-origin coordinates
        img = torch.zeros(1, h, w, dtype=torch.float64)
        img[0, int(y), int(x)] = 1.0
        out = apply_affine(img, **{k: params[k] for k in ("theta", "tx", "ty", "shear", "zx", "zy")})[0]
        rows, cols = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        centroid = torch.stack([(out * cols).sum(), (out * rows).sum()]) / out.sum()
        moved = warp_points(torch.tensor([[x, y]]), params, (h, w))[0]
        assert torch.allclose(moved.double(), centroid, atol=0.35), (params, moved, centroid)


def dataset_module(tiny_phantom, tmp_path, rank, *sets):
    cfg = vcfg(tiny_phantom, manifest(tiny_phantom, tmp_path / "m.csv"), *sets)
    dm = VertebraDataModule(cfg, load_vertebra_data(cfg, log=lambda m: None))
    progress = SimpleNamespace(epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=0)))
    dm.trainer = SimpleNamespace(global_rank=rank, fit_loop=progress)
    return dm


def test_augmentation_moves_the_points_and_each_rank_draws_its_own(tiny_phantom, tmp_path):
    batches = {}
    for rank in (0, 1, 0):
        loader = dataset_module(tiny_phantom, tmp_path, rank, "augment=seed").train_dataloader()
        assert loader.rank == rank
        batches.setdefault(rank, []).append(next(iter(loader)))
    (a, again), (b,) = batches[0], batches[1]
    assert all(torch.equal(x, y) for x, y in zip(a, again))          # a rank repeats its own draws
    assert torch.equal(a[4], b[4]) and not torch.equal(a[0], b[0])     # same images, other augmentation
    plain = dataset_module(tiny_phantom, tmp_path, 0).train_dataloader().dataset[int(a[4][0])]
    assert plain[2].sum() == 13 and not torch.equal(plain[1], a[1][0])  # the seed preset moved the points
    # every body still marked present lies inside its image
    inside = (a[1] >= 0).all(-1).all(-1) & (a[1][..., 0] <= 96).all(-1) & (a[1][..., 1] <= 160).all(-1)
    assert bool(inside[a[2] > 0].all())


def test_a_body_moved_out_of_the_image_is_absent():
    from vfa.data.vertebrae import _augment

    aug = Augment(config_mod.get_augment_config("none", shift_rows=0.5))
    pts = torch.tensor([[[10.0, 5.0]] * 6, [[10.0, 50.0]] * 6])
    torch.manual_seed(0)
    while True:   # a draw that moves the image up by 5-30 px: the first body leaves at the top
        state = torch.get_rng_state()
        tx = float(aug.draw(size=(64, 40))["tx"])
        if 5 < tx < 30:
            break
    torch.set_rng_state(state)   # _augment draws that same shift
    _, moved, present = _augment(aug, torch.zeros(1, 64, 40), pts, torch.ones(2))
    assert present.tolist() == [0.0, 1.0] and moved[0].abs().sum() == 0
    assert torch.allclose(moved[1], pts[1] - torch.tensor([0.0, tx]))


def test_each_rank_draws_its_own_crops():
    cfg = config_mod.resolve("vertebra-demo", overrides=config_mod.parse_set(TINY))
    module = VertebraModule(config_mod.to_dict(cfg))
    draws = []
    for rank in (0, 1, 0):
        module._trainer = SimpleNamespace(global_rank=rank, current_epoch=0, optimizers=[
            SimpleNamespace(param_groups=[{"lr": 1e-3}])])
        module.on_train_epoch_start()
        draws.append(torch.rand(4, generator=module._crop_rng))
    assert torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[1])


def test_resume_keeps_a_per_vertebra_history_s_own_columns(tmp_path):
    path = tmp_path / "history.csv"
    pd.DataFrame([dict(zip(HISTORY_KEYS, [e, 1.0, 1e-3, 2.0, 0.1, 0.5])) for e in range(3)]).to_csv(path, index=False)
    assert keep_history_before(path, 2) == 1
    kept = pd.read_csv(path)
    assert tuple(kept.columns) == HISTORY_KEYS and list(kept["epoch"]) == [0, 1]
    np.testing.assert_allclose(kept["val_point_error"], [0.1, 0.1])
