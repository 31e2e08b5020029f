"""Cross-validation: folds are patients', validation is exactly the fold, out-of-fold covers every
non-test image once, a single fold runs alone (array job) and --resume only summarizes what is done."""
import json

import pandas as pd
import pytest

from vfa import config as config_mod
from vfa.cli import main as cli_main
from vfa.data.samples import DataError, load_samples
from vfa.data.split import assign_folds, fold_samples, folds_of

from tests.helpers import TINY


def _manifest(tiny_phantom, tmp_path, patients_of_two=True):
    """The tiny phantom's manifest, with pairs of images sharing a patient (so patient-level matters)."""
    frame = pd.read_csv(tiny_phantom / "manifest.csv", dtype=str, keep_default_na=False)
    frame["filename"] = [str(tiny_phantom / f) for f in frame["filename"]]
    if patients_of_two:  # two images of one label per patient
        frame = frame.sort_values(["label", "filename"]).reset_index(drop=True)
        frame["patient_id"] = [f"P{i // 2:03d}-{lab}" for i, lab in enumerate(frame["label"])]
    path = tmp_path / "manifest.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_folds_are_patient_level_stratified_and_respect_a_fold_column(tiny_phantom, tmp_path):
    path, frame = _manifest(tiny_phantom, tmp_path)
    rows = load_samples(path, split="all")
    which = folds_of(rows, 3, seed=0)
    test = [s == "test" for s in rows.columns["split"]]
    assert all((k is None) == t for k, t in zip(which, test))
    by_patient = pd.DataFrame({"p": rows.columns["patient_id"], "k": which}).dropna()
    assert (by_patient.groupby("p")["k"].nunique() == 1).all()
    assert which == folds_of(load_samples(path, split="all"), 3, seed=0)  # deterministic
    train, val = fold_samples(rows, 1, 3)
    assert sorted(val.paths) == sorted(p for p, k in zip(rows.paths, which) if k == 1)
    assert not set(train.paths) & set(val.paths) and len(train.paths) + len(val.paths) == sum(not t for t in test)
    # a manifest's own fold column wins; a bad value names its CSV line
    frame["fold"] = ["" if s == "test" else str(i % 3) for i, s in enumerate(frame["split"])]
    frame.to_csv(path, index=False)
    given = folds_of(load_samples(path, split="all"), 3)
    assert [k for k in given if k is not None] == [int(f) for f in frame["fold"] if f != ""]
    frame.loc[0, "fold"] = "7" if frame.loc[0, "split"] != "test" else frame.loc[0, "fold"]
    frame.loc[1, "fold"], frame.loc[1, "split"] = "x", "train"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="line 3: fold 'x'"):
        folds_of(load_samples(path, split="all"), 3)


def test_assign_folds_matches_sklearn_and_needs_enough_patients():
    from sklearn.model_selection import StratifiedGroupKFold

    groups = [f"p{i // 3}" for i in range(60)]
    labels = [(i // 3) % 4 == 0 for i in range(60)]
    got = assign_folds(groups, labels, 4, seed=3)
    for k, (_, held) in enumerate(StratifiedGroupKFold(4, shuffle=True, random_state=3).split(
            [[0]] * 60, [str(v) for v in labels], groups)):
        assert (got[held] == k).all()
    with pytest.raises(DataError, match="5 folds need at least 5 patients"):
        assign_folds(["a", "a", "b"], [0, 1, 0], 5)


def _cv(manifest, out, *extra):
    args = ["cv", "--preset", "cpu-demo", "--data", str(manifest), "--folds", "3", "--out", str(out), "--epochs", "1"]
    for item in TINY + list(extra):
        args += ["--set", item]
    return cli_main(args)


@pytest.mark.slow
def test_cv_three_folds_end_to_end(tiny_phantom, tmp_path, capsys):
    manifest, frame = _manifest(tiny_phantom, tmp_path)
    out = tmp_path / "cv"
    assert _cv(manifest, out) == 0
    rows = load_samples(manifest, split="all")
    which = folds_of(rows, 3)
    for k in range(3):  # each fold's validation images are exactly that fold's
        cfg = config_mod.resolve("seed", out / f"fold{k}" / "config.yaml")
        assert cfg.data.fold == k and cfg.data.val is None
        hist = pd.read_csv(out / f"fold{k}" / "history.csv")
        assert hist["n"].iloc[-1] == sum(1 for f in which if f == k)
    oof = pd.read_csv(out / "oof_predictions.csv")
    non_test = frame[frame["split"] != "test"]
    assert len(oof) == len(non_test) and oof["file"].is_unique  # every training image exactly once
    fold_of = dict(zip(rows.rel_paths(), which))
    assert all(fold_of[f] == k for f, k in zip(oof["file"], oof["fold"]))
    patients = dict(zip(rows.rel_paths(), rows.columns["patient_id"]))
    assert (oof.assign(p=oof["file"].map(patients)).groupby("p")["fold"].nunique() == 1).all()
    summary = json.loads((out / "cv_summary.json").read_text())
    from sklearn.metrics import roc_auc_score
    assert summary["pooled"]["auc"] == pytest.approx(roc_auc_score(oof["label"], oof["raw"]))
    table = pd.read_csv(out / "cv_folds.csv")
    assert list(table["fold"]) == [0, 1, 2]
    for k, g in oof.groupby("fold"):
        assert table.loc[k, "auc"] == pytest.approx(roc_auc_score(g["label"], g["raw"]))
    # the fold ensemble, evaluated once on the held-out test rows
    test = json.loads((out / "test" / "metrics.json").read_text())
    assert test["n"] == int((frame["split"] == "test").sum()) and test["model"].endswith("ensemble.yaml")
    assert summary["ensemble_test"]["auc"] == test["auc"]
    assert test["threshold"] == pytest.approx(summary["pooled"]["threshold"])
    for name in ("cv_report.html", "cv_roc.png", "ensemble.yaml"):
        assert (out / name).is_file()

    # --resume with everything finished: nothing retrained, the summary written again
    stamp = (out / "fold0" / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    capsys.readouterr()
    assert _cv(manifest, out) == 2 and "--resume" in capsys.readouterr().err  # not silently redone
    assert cli_main(["cv", "--preset", "cpu-demo", "--data", str(manifest), "--folds", "3", "--out", str(out),
                     "--epochs", "1", "--resume", *sum((["--set", s] for s in TINY), [])]) == 0
    assert (out / "fold0" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamp
    assert "fold 0: finished" in capsys.readouterr().out
    # other settings on resume are refused, naming the key
    assert _cv(manifest, out, "optim.lr=0.5") == 2
    assert "optim.lr" in capsys.readouterr().err


@pytest.mark.slow
def test_cv_single_fold_as_an_array_job(tiny_phantom, tmp_path, capsys):
    manifest, _ = _manifest(tiny_phantom, tmp_path)
    out = tmp_path / "cv"
    assert _cv(manifest, out, "data.fold=2") == 0
    assert (out / "fold2" / "checkpoints" / "last.ckpt").is_file()
    assert not (out / "fold0").exists() and not (out / "cv_summary.json").exists()
    assert "folds [0, 1] are not yet" in capsys.readouterr().out
