"""Ensembles: several checkpoints scored as one, as the seed study's model was."""
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.helpers import make_checkpoint, write_folder
from vfa import checkpoint
from vfa import config as config_mod
from vfa.cli import main
from vfa.inference.ensemble import load_ensemble, write_ensemble
from vfa.inference.predict import predict_files


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    cfg = config_mod.resolve("cpu-demo", overrides=config_mod.parse_set(
        ["data.size=[80,48]", "model.backbone=resnet18", "model.head=[8]"]))
    from vfa.models.network import build_from_config

    torch.manual_seed(7)
    other = checkpoint.save(root / "c.ckpt", build_from_config(cfg.model), cfg, force=True)  # another input size
    return {"a": make_checkpoint(root / "a.ckpt"), "b": make_checkpoint(root / "b.ckpt", seed=1), "c": other,
            "data": write_folder(root / "imgs", n_per_class=5, seed=4), "val": write_folder(root / "val", seed=8),
            "root": root}


def _separate(env, names, **kw):
    return [predict_files(env[n], [env["data"]], backend="torch", device="cpu", num_workers=0, **kw) for n in names]


@pytest.mark.parametrize("combine", ["mean", "max"])
def test_ensemble_score_is_the_rule_over_members_separate_predictions(env, combine):
    """Members of different input sizes mix; with TTA the combined tta_mean is over members x passes."""
    names = ["a", "b", "c"]
    parts = _separate(env, names, tta=2)
    models = load_ensemble([env[n] for n in names], "cpu", combine=combine)
    ens = predict_files(models, [env["data"]], backend="torch", num_workers=2, tta=2)
    rule = np.mean if combine == "mean" else np.max
    for kind in ("raw", "tta_mean", "tta_max"):
        stacked = np.stack([p[kind].to_numpy() for p in parts], 1)
        np.testing.assert_allclose(ens[kind].to_numpy(), rule(stacked, axis=1), atol=1e-6)
        for name, part in zip(names, parts):  # each member's own column, for a statistician to re-combine
            np.testing.assert_allclose(ens[f"{kind}_{name}"].to_numpy(), part[kind].to_numpy(), atol=1e-6)
    assert ens["file"].tolist() == parts[0]["file"].tolist()


def test_ensemble_file_checksums_calibration_and_commands(env, tmp_path):
    ens_file = write_ensemble([env["a"], env["b"]], tmp_path / "ens.yaml")
    data = yaml.safe_load(ens_file.read_text())
    assert [m["name"] for m in data["members"]] == ["a", "b"] and len(data["members"][0]["sha256"]) == 64
    assert main(["calibrate", "--model", str(ens_file), "--data", str(env["val"]), "--out",
                 str(tmp_path / "cal.yaml"), "--threshold", "youden", "--device", "cpu"]) == 0
    thr = yaml.safe_load((tmp_path / "cal.yaml").read_text())["threshold"]
    assert 0 <= thr <= 1
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(tmp_path / "cal.yaml"), str(env["data"]), "--out", str(out),
                 "--backend", "torch", "--device", "cpu"]) == 0
    frame = pd.read_csv(out)
    assert (frame["predicted"] == (frame["raw"] >= thr)).all()
    assert {"raw_a", "raw_b"} <= set(frame.columns)
    ev = tmp_path / "ev"
    assert main(["evaluate", "--model", str(env["a"]), "--model", str(env["b"]), "--data", str(env["val"]),
                 "--out", str(ev), "--device", "cpu", "--gallery", "0"]) == 0
    pred = pd.read_csv(ev / "predictions.csv")
    np.testing.assert_allclose(pred["raw"], (pred["raw_a"] + pred["raw_b"]) / 2, atol=1e-9)


def test_changed_member_and_export_of_an_ensemble_are_refused(env, tmp_path, capsys):
    import shutil

    a = shutil.copy(env["a"], tmp_path / "a.ckpt")
    ens_file = write_ensemble([a, env["b"]], tmp_path / "ens.yaml")
    with open(a, "ab") as f:
        f.write(b"\0")
    with pytest.raises(config_mod.ConfigError, match="has changed since the ensemble was written"):
        load_ensemble(ens_file)
    assert main(["export", "--model", str(env["a"]), "--model", str(env["b"]), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "export each member" in err and "Traceback" not in err


def test_ensemble_heatmap_is_the_mean_of_members_maps(env):
    from vfa.explain.cam import iter_cams

    paths = sorted(str(p) for p in (env["data"] / "frac").glob("*.png"))[:2]
    ens = load_ensemble([env["a"], env["b"]], "cpu")
    together = list(iter_cams(ens, paths, "gradcam", "auto"))
    alone = [list(iter_cams(m, paths, "gradcam", "auto")) for m in ens.members]
    for k, (path, p, _, heat) in enumerate(together):
        assert heat == pytest.approx((alone[0][k][3] + alone[1][k][3]) / 2, abs=1e-6)
        assert p == pytest.approx((alone[0][k][1] + alone[1][k][1]) / 2, abs=1e-6)


def test_run_folders_as_members_are_their_best_checkpoints(env, tmp_path):
    """model_paths resolves run folders, so the file records the checkpoint (name, path, checksum)."""
    import shutil

    runs = [tmp_path / "fold0", tmp_path / "fold1"]
    for run, src in zip(runs, (env["a"], env["b"])):
        (run / "checkpoints").mkdir(parents=True)
        shutil.copy(src, run / "checkpoints" / "best.ckpt")
    out = write_ensemble([str(r) for r in runs], tmp_path / "ens.yaml")
    members = yaml.safe_load(out.read_text())["members"]
    assert [m["name"] for m in members] == ["fold0", "fold1"]
    assert [m["path"] for m in members] == ["fold0/checkpoints/best.ckpt", "fold1/checkpoints/best.ckpt"]
    assert len(load_ensemble([str(r) for r in runs])) == 2
