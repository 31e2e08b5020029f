"""Experiment tracking through Lightning's loggers, and the runs table."""
import pandas as pd
import pytest

import vfa
from vfa import config as config_mod
from vfa.cli import main as cli_main

from tests.helpers import tiny_cfg


def _tb_scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc, [e.value for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


@pytest.mark.slow
def test_tensorboard_and_csv_loggers_hold_what_history_has(tiny_phantom, tmp_path):
    cfg = tiny_cfg(tiny_phantom, epochs=2)
    cfg.data.test = str(tiny_phantom / "test")
    cfg.trainer.logger = ["csv", "tensorboard"]
    cfg.trainer.log_every_n_steps = 1
    run = vfa.train(cfg, tmp_path / "run")
    history = pd.read_csv(run / "history.csv")
    acc, auc = _tb_scalars(run / "logs" / "tensorboard", "val_auc")
    assert auc == pytest.approx(history["auc"].tolist(), abs=1e-6)  # every epoch's AUC, as history.csv
    tags = acc.Tags()
    assert {"loss", "val_sn", "val_sp", "test_auc"} <= set(tags["scalars"])
    assert any(t.startswith("lr-") for t in tags["scalars"])  # per-step learning rate
    assert {"curves_metrics", "curves_loss"} <= set(tags["images"])
    import json
    _, test_auc = _tb_scalars(run / "logs" / "tensorboard", "test_auc")
    assert test_auc == pytest.approx([json.loads((run / "test_metrics.json").read_text())["auc"]], abs=1e-6)
    hparams = (run / "logs" / "tensorboard" / "hparams.yaml").read_text()
    assert "resnet18" in hparams  # the resolved config
    metrics = pd.read_csv(run / "logs" / "csv" / "version_0" / "metrics.csv")
    assert metrics["val_auc"].dropna().tolist() == pytest.approx(history["auc"].tolist(), abs=1e-6)


@pytest.mark.slow
def test_mlflow_logger_resumes_the_same_run(tiny_phantom, tmp_path):
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (pip install 'vfa[mlflow]') is not installed")
    cfg = tiny_cfg(tiny_phantom, epochs=1)
    cfg.trainer.logger = "mlflow"
    run = vfa.train(cfg, tmp_path / "runs" / "m")
    assert cli_main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    run_id = (run / "logs" / "mlflow_run_id.txt").read_text()
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlruns' / 'mlflow.db'}")
    history = pd.read_csv(run / "history.csv")
    logged = [m.value for m in sorted(client.get_metric_history(run_id, "val_auc"), key=lambda m: m.step)]
    assert logged == pytest.approx(history["auc"].tolist(), abs=1e-6)
    got = client.get_run(run_id)
    assert got.data.tags["vfa.run_dir"] == str(run.resolve()) and got.data.params
    assert {"history.csv", "config.yaml", "curves_metrics.png"} <= {a.path for a in client.list_artifacts(run_id)}


def test_logger_option_is_checked():
    with pytest.raises(config_mod.ConfigError, match="trainer.logger"):
        config_mod.resolve("seed", overrides={"trainer": {"logger": ["csv", "wandb"]}})
    assert config_mod.loggers(config_mod.resolve("seed", overrides={"trainer": {"logger": "none"}}).trainer) == []


@pytest.mark.slow
def test_runs_list_and_compare(tiny_phantom, tmp_path, capsys):
    a = vfa.train(tiny_cfg(tiny_phantom, epochs=1), tmp_path / "runs" / "a")
    cfg = tiny_cfg(tiny_phantom, epochs=2)
    cfg.optim.lr = 5e-4
    b = vfa.train(cfg, tmp_path / "runs" / "b")
    capsys.readouterr()
    assert cli_main(["runs", "list", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["run", "preset", "epochs"]
    rows = {line.split()[0]: line for line in out[1:]}
    assert set(rows) == {"a", "b"} and "1/1" in rows["a"] and "2/2" in rows["b"]
    best = pd.read_csv(b / "history.csv")["auc"].max()
    assert f"{best:.4g}" in rows["b"] and "optim.lr=0.0005" in rows["b"] and "optim.lr=0.001 " in rows["a"]
    capsys.readouterr()
    assert cli_main(["runs", "compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0] + " " + line.split()[1]: line.split()
             for line in text.splitlines() if len(line.split()) > 2}
    assert lines["optim.lr 0.001"][2] == "0.0005" and lines["optim.epochs 1"][2] == "2"
    last_a, last_b = (pd.read_csv(r / "history.csv")["auc"].iloc[-1] for r in (a, b))
    auc_row = next(line.split() for line in text.splitlines() if line.startswith("last val auc"))
    assert auc_row[-1] == f"{last_b - last_a:.4g}"
    assert cli_main(["runs", "compare", str(a)]) == 2
