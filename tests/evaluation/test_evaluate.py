"""`vfa evaluate / calibrate / predict / compare` end to end on a random-weight checkpoint (fast)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import vfa
from tests.helpers import model_env, write_folder
from vfa import config as config_mod
from vfa.stats import accuracy as stats
from vfa.cli import main as cli_main
from vfa.config import ConfigError
from vfa.evaluation.calibrate import calibrate
from vfa.evaluation.compare import compare
from vfa.evaluation.evaluate import evaluate
from vfa.stats.metrics import SCALAR_KEYS, med_metrics
from vfa.inference.predict import load_model, predict_files

FAST = dict(num_workers=0, progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return model_env(tmp_path_factory.mktemp("evaluate"))


def test_evaluate_writes_every_output(env, tmp_path):
    out = tmp_path / "eval"
    res = evaluate(env["ckpt"], env["test"], out, tta=2, seed=3, **FAST)
    for name in ("metrics.json", "predictions.csv", "final_results.xlsx", "report.html", "roc.png",
                 "confusion_matrix.png", "sn_sp_threshold.png", "reliability.png", "test_fnames.npy",
                 "test_classes.npy", "test_preds.npy", "test_max_preds.npy", "test_mean_preds.npy"):
        assert (out / name).is_file(), name
    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns) == ["image_id", "file", "label", "raw", "tta_mean", "tta_max", "predicted"]
    assert pred["image_id"].iloc[0] == "norm/norm_000.png" and len(pred) == 8
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == res and set(SCALAR_KEYS) <= set(saved)
    for key in ("auc_ci", "sn_ci", "sp_ci", "ppv_ci", "npv_ci", "acc_ci", "plr_ci", "nlr_ci", "brier", "ece"):
        assert key in saved, key
    assert set(saved["scores"]) == {"raw", "tta_mean", "tta_max"}
    assert saved["threshold"] == 0.5 and "notebook" in saved["threshold_source"]
    md = med_metrics(pred["label"], pred["raw"], 0.5)
    for key in ("tp", "fp", "fn", "tn", "n"):
        assert saved[key] == md[key]
    assert saved["sn_ci"] == pytest.approx(list(stats.wilson(md["tp"], md["tp"] + md["fn"])))
    md_max = med_metrics(pred["label"], pred["tta_max"], 0.5)
    assert saved["scores"]["tta_max"]["tp"] == md_max["tp"]
    np.testing.assert_array_equal(pred["predicted"], (pred["raw"] >= 0.5).astype(int))
    # deterministic given the seed
    again = evaluate(env["ckpt"], env["test"], tmp_path / "again", tta=2, seed=3, report=False, **FAST)
    np.testing.assert_allclose(pd.read_csv(tmp_path / "again" / "predictions.csv")["tta_max"], pred["tta_max"])
    assert again["scores"]["tta_mean"]["brier"] == pytest.approx(saved["scores"]["tta_mean"]["brier"])


def test_threshold_chosen_on_validation_is_applied_unchanged(env, tmp_path):
    evaluate(env["ckpt"], env["val"], tmp_path / "val", report=False, **FAST)
    val_csv = tmp_path / "val" / "predictions.csv"
    val = pd.read_csv(val_csv)
    res = evaluate(env["ckpt"], env["test"], tmp_path / "test", threshold="youden", threshold_from=val_csv,
                   report=False, **FAST)
    expected = stats.choose_threshold(val["label"], val["raw"], "youden")
    assert res["threshold"] == expected
    assert str(val_csv) in res["threshold_source"] and "youden" in res["threshold_source"]
    test = pd.read_csv(tmp_path / "test" / "predictions.csv")
    np.testing.assert_array_equal(test["predicted"], (test["raw"] >= expected).astype(int))
    assert res["tp"] == int(((test["raw"] >= expected) & (test["label"] == 1)).sum())
    # a TTA score needs the same columns in the validation file; a number needs no file
    with pytest.raises(ConfigError, match="tta_mean"):
        evaluate(env["ckpt"], env["test"], tmp_path / "t2", threshold="youden", threshold_from=val_csv, tta=1,
                 report=False, **FAST)
    with pytest.raises(ConfigError, match="data-driven"):
        evaluate(env["ckpt"], env["test"], tmp_path / "t3", threshold=0.3, threshold_from=val_csv, **FAST)
    own = evaluate(env["ckpt"], env["test"], tmp_path / "t4", threshold="sensitivity=0.75", report=False, **FAST)
    assert own["sn"] >= 0.75 and "optimistic" in own["threshold_source"]
    # the threshold sits exactly on a score: the CSV must reproduce the class and the metrics exactly
    csv = pd.read_csv(tmp_path / "t4" / "predictions.csv")
    np.testing.assert_array_equal(csv["predicted"], (csv["raw"] >= own["threshold"]).astype(int))
    assert own["sn"] == med_metrics(csv["label"], csv["raw"], own["threshold"])["sn"]


def test_train_call_keeps_flat_keys_and_files(env, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    res = evaluate(env["ckpt"], env["test"], run, metrics_name="test_metrics.json", on_bad_file="error", **FAST)
    assert sorted(p.name for p in run.iterdir()) == ["test_metrics.json", "test_predictions.csv"]
    flat = json.loads((run / "test_metrics.json").read_text())
    assert set(SCALAR_KEYS) <= set(flat) and flat == res


def test_single_class_set_is_reported_not_crashed(env, tmp_path):
    data = write_folder(tmp_path / "one", n_per_class=3)
    for f in (data / "frac").iterdir():
        f.unlink()
    res = evaluate(env["ckpt"], data, tmp_path / "out", **FAST)
    assert res["auc"] is None and res["auc_ci"] == [None, None]
    assert any("one class" in n for n in res["notes"])
    assert (tmp_path / "out" / "report.html").is_file()
    with pytest.raises(ConfigError, match="single class"):
        evaluate(env["ckpt"], data, tmp_path / "out2", threshold="youden", **FAST)


def test_id_regex(env, tmp_path):
    res = evaluate(env["ckpt"], env["test"], tmp_path / "a", id_regex=r"(\w+_\d+)\.png", report=False, **FAST)
    assert pd.read_csv(tmp_path / "a" / "predictions.csv")["image_id"].iloc[-1] == "frac_003"
    assert res["id_regex"]
    with pytest.raises(ConfigError, match="does not match"):
        evaluate(env["ckpt"], env["test"], tmp_path / "b", id_regex=r"^zzz", **FAST)


def test_calibrate_stores_threshold_and_temperature(env, tmp_path):
    out = tmp_path / "cal.ckpt"
    summary = calibrate(env["ckpt"], env["val"], out, threshold="youden", **FAST)
    model = load_model(out)
    assert model.threshold == pytest.approx(summary["threshold"]) and model.temperature == pytest.approx(
        summary["temperature"])
    assert "youden" in model.threshold_source and summary["nll_after"] <= summary["nll_before"] + 1e-9
    raw = load_model(env["ckpt"])
    assert (raw.threshold, raw.temperature) == (0.5, 1.0)
    x = torch.rand(2, 3, 64, 40)
    with torch.no_grad():
        z = raw(x)
    np.testing.assert_allclose(vfa.predict(model, x), torch.sigmoid(z / model.temperature).numpy(), rtol=1e-5)
    # the stored threshold is what `--threshold model` and `predict` apply
    res = evaluate(out, env["test"], tmp_path / "e", threshold="model", report=False, **FAST)
    assert res["threshold"] == pytest.approx(model.threshold) and "stored in the model" in res["threshold_source"]
    frame = predict_files(out, [env["test"]])
    np.testing.assert_array_equal(frame["predicted"], (frame["raw"] >= model.threshold).astype(int))
    with pytest.raises(FileExistsError):
        calibrate(env["ckpt"], env["val"], out, **FAST)


def test_predict_files_and_cli_predict(env, tmp_path, capsys):
    frame = predict_files(env["ckpt"], [str(env["test"] / "norm"), str(env["test"] / "frac" / "*.png")], tta=2)
    assert list(frame.columns) == ["image_id", "file", "raw", "tta_mean", "tta_max", "predicted"] and len(frame) == 8
    out = tmp_path / "p.csv"
    assert cli_main(["predict", "--model", str(env["ckpt"]), str(env["test"]), "--out", str(out)]) == 0
    cli = pd.read_csv(out)
    assert sorted(cli["file"]) == list(cli["file"])  # a folder is listed in sorted order
    merged = cli.merge(frame, on="file")
    assert len(merged) == 8
    np.testing.assert_allclose(merged["raw_x"], merged["raw_y"], rtol=1e-5)
    assert cli_main(["predict", "--model", str(env["ckpt"]), str(tmp_path / "nope*.png"), "--out",
                     str(tmp_path / "q.csv")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_compare_and_cli(env, tmp_path, capsys):
    evaluate(env["ckpt"], env["val"], tmp_path / "a", report=False, **FAST)
    evaluate(env["ckpt_b"], env["val"], tmp_path / "b", report=False, **FAST)
    a, b = tmp_path / "a" / "predictions.csv", tmp_path / "b" / "predictions.csv"
    res = compare(a, b)
    fa, fb = pd.read_csv(a), pd.read_csv(b)
    ref = stats.delong_paired(fa["label"], fa["raw"], fb["raw"])
    assert res["n"] == 10 and res["delong"]["diff"] == pytest.approx(ref["diff"])
    pos = fa["label"] == 1
    ca, cb = fa["predicted"][pos] == 1, fb["predicted"][pos] == 1
    assert res["mcnemar_sn"]["b"] == int((ca & ~cb).sum()) and res["mcnemar_sn"]["c"] == int((~ca & cb).sum())
    assert cli_main(["compare", str(a), str(b), "--out", str(tmp_path / "c.json")]) == 0
    text = capsys.readouterr().out
    assert "paired DeLong" in text and "McNemar" in text and (tmp_path / "c.json").is_file()
    bad = fb.assign(label=1 - fb["label"])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert cli_main(["compare", str(a), str(tmp_path / "bad.csv")]) == 2
    assert "different labels" in capsys.readouterr().err


def test_cli_evaluate_and_user_errors(env, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["evaluate", "--model", str(env["ckpt"]), "--data", str(env["test"]), "--out", str(out),
                     "--threshold", "specificity=0.5"]) == 0
    assert json.loads((out / "metrics.json").read_text())["sp"] >= 0.5
    assert cli_main(["evaluate", "--model", str(env["ckpt"]), "--data", str(env["test"]), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli_main(["evaluate", "--model", str(env["ckpt"]), "--data", str(env["test"]), "--out",
                     str(tmp_path / "x"), "--score", "tta_mean"]) == 2
    assert "--tta" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["evaluate", "--model", "m", "--data", "d", "--out", "o", "--threshold", "sens=0.9"])
