"""End-to-end training on a tiny phantom: a few dozen images, small backbone, 1-2 epochs."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import vfa
from vfa import config as config_mod
from vfa.cli import main as cli_main
from vfa.training.module import HISTORY_KEYS

from tests.helpers import TINY, tiny_cfg  # noqa: E402


@pytest.mark.slow
def test_train_writes_run_and_is_reproducible(tiny_phantom, tmp_path):
    run = vfa.train(tiny_cfg(tiny_phantom, epochs=2), tmp_path / "a")
    for name in ("config.yaml", "environment.json", "history.csv", "checkpoints/last.ckpt",
                 "checkpoints/best.ckpt", "curves_metrics.png", "curves_loss.png"):
        assert (run / name).is_file(), name
    history = pd.read_csv(run / "history.csv")
    assert tuple(history.columns) == HISTORY_KEYS and list(history["epoch"]) == [0, 1]
    n_val = sum(1 for _ in (tiny_phantom / "val").rglob("*.png"))
    assert (history["n"] == n_val).all()
    assert history["lr"][0] == pytest.approx(1e-3) and history["lr"][1] < 1e-3  # SGDR per epoch
    saved = config_mod.resolve("seed", run / "config.yaml")
    assert saved.model.backbone == "resnet18" and saved.data.size == (96, 56)
    again = vfa.train(tiny_cfg(tiny_phantom, epochs=2), tmp_path / "b")
    pd.testing.assert_frame_equal(history, pd.read_csv(again / "history.csv"))

    # the checkpoint loads safely and predicts what training validated
    model = vfa.load_model(run / "checkpoints" / "last.ckpt")
    assert model.config.data.size == (96, 56)
    paths = sorted(str(p) for p in (tiny_phantom / "val").rglob("*.png"))
    probs = vfa.predict(model, paths)
    assert probs.shape == (len(paths),) and ((probs >= 0) & (probs <= 1)).all()


@pytest.mark.slow
def test_cli_train_resume_and_test_metrics(tiny_phantom, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--preset", "cpu-demo", "--train", str(tiny_phantom / "train"), "--val",
            str(tiny_phantom / "val"), "--test", str(tiny_phantom / "test"), "--out", str(run), "--epochs", "1"]
    for item in TINY:
        args += ["--set", item]
    assert cli_main(args) == 0
    metrics = json.loads((run / "test_metrics.json").read_text())
    history = pd.read_csv(run / "history.csv")
    assert set(history.columns) - {"epoch", "train_loss", "lr"} <= set(metrics)
    assert (run / "test_predictions.csv").is_file()
    # refuses to overwrite without --force
    assert cli_main(args) == 2
    assert "--force" in capsys.readouterr().err
    # resume continues with the next epoch, keeping epoch 0
    first = history.iloc[0].copy()
    assert cli_main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [0, 1]
    pd.testing.assert_series_equal(history.iloc[0], first, check_names=False)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    n_train = sum(1 for _ in (tiny_phantom / "train").rglob("*.png"))
    assert ckpt["global_step"] == 2 * math.ceil(n_train / 8)  # two full epochs of optimizer steps


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["train", "--train", str(tmp_path / "nope"), "--val", str(tmp_path / "val"), "--out",
                     str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "data folder not found" in err and "Traceback" not in err
    assert cli_main(["train", "--preset", "nope", "--out", str(tmp_path / "r2")]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert cli_main(["train", "--resume", str(tmp_path / "none")]) == 2


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_ddp_two_processes_metrics_match_single_process(tiny_phantom, tmp_path):
    """2-process DDP on CPU (gloo): every validation image counted once, same metrics as one process."""
    run, val = tmp_path / "ddp", tmp_path / "val"
    shutil.copytree(tiny_phantom / "val", val)
    if sum(1 for _ in val.rglob("*.png")) % 2 == 0:  # odd size, so that DistributedSampler must pad
        next(val.glob("norm/*.png")).unlink()
    cmd = [sys.executable, "-m", "vfa.cli", "train", "--preset", "cpu-demo", "--train", str(tiny_phantom / "train"),
           "--val", str(val), "--out", str(run), "--epochs", "1"]
    for item in TINY + ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    row = pd.read_csv(run / "history.csv").iloc[-1]
    n_val = sum(1 for _ in val.rglob("*.png"))
    assert n_val % 2 == 1 and row["n"] == n_val
    single = vfa.evaluate(run / "checkpoints" / "last.ckpt", val, tmp_path / "single",
                          num_workers=0, progress=False)
    for key in ("tn", "fp", "fn", "tp", "n"):
        assert single[key] == row[key], key
    assert single["auc"] == pytest.approx(row["auc"], abs=1e-6)

    # the way a cluster user starts it: torchrun (Lightning reads its environment); same metrics
    launched = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29523",
           *cmd[1:cmd.index("--out") + 1], str(launched), *cmd[cmd.index("--out") + 2:]]
    result = subprocess.run(cmd, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    again = pd.read_csv(launched / "history.csv").iloc[-1]
    for key in ("tn", "fp", "fn", "tp", "n"):
        assert again[key] == row[key], key
    assert again["auc"] == pytest.approx(row["auc"], abs=1e-6)


def test_augment_on_auto_resolves_by_accelerator():
    from vfa.training.train import resolve_augment_on

    cfg = config_mod.resolve("cpu-demo", overrides={"trainer": {"accelerator": "cpu"}})
    assert cfg.data.augment_on == "auto" and resolve_augment_on(cfg) == "workers"
    cfg.trainer.accelerator = "gpu"
    assert resolve_augment_on(cfg) == "device"
    cfg.data.augment_on = "workers"
    assert resolve_augment_on(cfg) == "workers"
    with pytest.raises(config_mod.ConfigError, match="augment_on"):
        config_mod.resolve("seed", overrides={"data": {"augment_on": "gpu"}})


def test_precision_auto_is_bf16_only_where_the_device_has_it(monkeypatch):
    import vfa.training.train as train_mod

    cfg = config_mod.resolve("seed", overrides={"trainer": {"accelerator": "cpu"}})
    assert cfg.trainer.precision == "auto"
    monkeypatch.setattr(train_mod, "native_bf16", lambda device: device == "cpu")
    assert train_mod.resolve_precision(cfg) == "bf16-mixed"
    monkeypatch.setattr(train_mod, "native_bf16", lambda device: False)
    assert train_mod.resolve_precision(cfg) == "32-true"
    cfg.trainer.precision = "16-mixed"  # an explicit choice is kept
    assert train_mod.resolve_precision(cfg) == "16-mixed"
    # the executed Keras 2.1.5 behaviour ran in fp32
    assert config_mod.resolve("keras215").trainer.precision == "32-true"
    monkeypatch.undo()
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    assert train_mod.native_bf16("cpu") == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert train_mod.native_bf16("mps") is False


def test_device_augmentation_draws_the_preset_per_sample():
    """The batch path applies the same preset as the workers path, with its own seeded stream."""
    from types import SimpleNamespace

    from vfa.data.augment import Augment, get_augment_config
    from vfa.training.module import VFAModule

    cfg = config_mod.resolve("cpu-demo", overrides=config_mod.parse_set(TINY + ["data.augment_on=device"]))
    module = VFAModule(config_mod.to_dict(cfg))
    module._trainer = SimpleNamespace(training=True)
    gray = torch.rand(4, 1, 96, 56, generator=torch.Generator().manual_seed(0))
    batch = (gray, torch.zeros(4), torch.arange(4))
    module._aug_rng.manual_seed(7)
    x, y, idx = module.on_after_batch_transfer(batch, 0)
    assert x.shape == (4, 3, 96, 56)
    augment = Augment(get_augment_config("seed", **cfg.augment_overrides))
    expected = augment(gray, torch.Generator().manual_seed(7), channels=3)
    torch.testing.assert_close(x, expected)
    assert not torch.equal(x[0, 0], x[1, 0])  # per-sample parameters, not one draw for the batch
    # the stream moves on between batches
    again, _, _ = module.on_after_batch_transfer(batch, 0)
    assert not torch.equal(again, x)
    module._trainer = SimpleNamespace(training=False)  # validation batches are only expanded to 3 channels
    plain, _, _ = module.on_after_batch_transfer(batch, 0)
    torch.testing.assert_close(plain, gray.expand(-1, 3, -1, -1))


@pytest.mark.slow
def test_train_with_device_augmentation_and_compile(tiny_phantom, tmp_path):
    """data.augment_on=device and model.compile=true train end to end; checkpoints load uncompiled."""
    cfg = tiny_cfg(tiny_phantom)
    config_mod.merge_into(cfg, {"data": {"augment_on": "device"},
                            "model": {"compile": True, "backbone": "vfa_cnn_small", "head": []}})
    run = vfa.train(cfg, tmp_path / "run")
    saved = config_mod.resolve("seed", run / "config.yaml")
    assert saved.data.augment_on == "device" and saved.model.compile is True
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 1 and math.isfinite(history["train_loss"][0])
    model = vfa.load_model(run / "checkpoints" / "last.ckpt")
    paths = sorted(str(p) for p in (tiny_phantom / "val").rglob("*.png"))
    assert vfa.predict(model, paths).shape == (len(paths),)


def test_deterministic_is_warn_only_on_cuda():
    """CUDA has no deterministic kernel for adaptive max-pool backward (the cpu-demo's global pool):
    on a GPU, trainer.deterministic=True runs warn-only instead of stopping; on CPU it holds."""
    from vfa.training.train import determinism

    cfg = config_mod.resolve("cpu-demo", overrides={"trainer": {"accelerator": "gpu"}})
    assert determinism(cfg) == "warn"
    cfg.trainer.accelerator = "cpu"
    assert determinism(cfg) is True
    cfg.trainer.deterministic = False
    assert determinism(cfg) is False


@pytest.mark.slow
def test_train_console_is_vfa_lines_and_one_summary(tiny_phantom, tmp_path):
    """What a user reads from `vfa train` in a terminal: no third-party tip, warning with a site-packages
    path or hardware line, no `v_num` in the bar, one summary line at the end; after --resume the epoch
    numbers go on the way history.csv and the bar count them (from 0)."""
    run = tmp_path / "run"

    def vfa_cli(*args):
        cmd = [sys.executable, "-m", "vfa.cli", "train", *args]
        for item in TINY:
            cmd += ["--set", item]
        done = subprocess.run(cmd + ["--set", "trainer.progress=true"], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout, done.stdout + done.stderr

    out, text = vfa_cli("--preset", "cpu-demo", "--train", str(tiny_phantom / "train"), "--val",
                        str(tiny_phantom / "val"), "--out", str(run), "--epochs", "2")
    for noise in ("litlogger", "Tip:", "site-packages", "log_every_n_steps", "v_num", "GPU available",
                  "TPU available", "Automatic Mixed Precision", "No CUDA runtime"):
        assert noise not in text, noise
    last = [line for line in out.splitlines() if line.strip()][-1]
    best = run / "checkpoints" / "best.ckpt"
    assert last.startswith("trained: best epoch ") and str(best) in last and "next: vfa evaluate" in last, last
    epoch = int(last.split("best epoch ")[1].split(",")[0])
    history = pd.read_csv(run / "history.csv")
    assert epoch in set(history["epoch"]) and history["epoch"].tolist() == [0, 1]

    _, text = vfa_cli("--resume", str(run), "--epochs", "3")
    assert f"resuming {run} at epoch 2 (epochs 0-1 done" in text
    assert "Epoch 2 " in text and "Epoch 3 " not in text
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [0, 1, 2]
