"""A tiny per-vertebra run through the CLI: synth -> train (with --test) -> evaluate -> predict, and
resume. Checks the plumbing and the outputs' shape, not accuracy (that is `make demo-vertebra`)."""
import json

import pandas as pd
import pytest

from vfa.cli import main
from vfa.registry import FAMILIES, IMAGE_COLUMNS
from vfa.stats.morphometry import POINT_COLUMNS

TINY = ["optim.epochs=1", "data.size=[192,112]", "vertebra.detector_size=[96,56]", "vertebra.crop_size=32",
        "vertebra.detector_backbone=resnet10t", "vertebra.landmark_backbone=resnet10t", "vertebra.width=16",
        "data.batch_size=4", "data.num_workers=0", "trainer.logger=none", "trainer.progress=false",
        "trainer.precision=32-true"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vertebra")
    data = root / "data"
    assert main(["synth", "--out", str(data), "--n", "24", "--size", "192x112", "--prevalence", "0.5"]) == 0
    m = str(data / "manifest.csv")
    sets = [a for s in TINY for a in ("--set", s)]
    rc = main(["train", "--preset", "vertebra-demo", "--train", f"{m}:train", "--val", f"{m}:val",
               "--test", f"{m}:test", "--out", str(root / "run"), *sets])
    assert rc == 0
    return root


@pytest.mark.slow
def test_train_writes_a_per_vertebra_test_evaluation(run):
    metrics = json.loads((run / "run" / "test_metrics.json").read_text())
    assert metrics["family"] == "vertebra" and "grade_and_type" in metrics["reading"]
    v = metrics["vertebrae"]
    assert v["n"]["vertebrae"] == 13 * v["n"]["images"]
    for key in ("detection_recall", "level_accuracy", "sensitivity", "specificity"):
        value = v[key]["value"]
        assert value is None or 0 <= value <= 1   # null (nothing found by a 1-epoch model) or a rate
    hist = pd.read_csv(run / "run" / "history.csv")
    assert list(hist["epoch"]) == [0] and hist["val_point_error"].notna().all()
    pred = pd.read_csv(run / "run" / "test_predictions.csv")
    assert list(pred.columns) == ["image_id", "file", "label", *IMAGE_COLUMNS[2:], *FAMILIES["vertebra"].extra_columns]
    assert (pred["predicted"] == (pred["max_grade"] >= 1)).all()  # the image is fractured when a body is


@pytest.mark.slow
def test_evaluate_and_predict_write_vertebrae_tables(run):
    ckpt = run / "run" / "checkpoints" / "last.ckpt"
    out = run / "eval"
    assert main(["evaluate", "--model", str(ckpt), "--data", str(run / "data" / "manifest.csv:test"),
                 "--out", str(out), "--threshold", "0.3"]) == 0
    v = pd.read_csv(out / "vertebrae.csv")
    assert {"file", "level", *POINT_COLUMNS, "grade", "type", "p_fracture", "height_loss"} <= set(v.columns)
    matches = pd.read_csv(out / "vertebra_matches.csv")
    assert len(matches) == 13 * len(pd.read_csv(out / "predictions.csv"))
    assert (out / "vertebra_report.md").read_text().count("|") > 40
    assert any((out / "overlays").glob("*.png"))
    # a per-vertebra model refuses what only image-level models do
    assert main(["evaluate", "--model", str(ckpt), "--data", str(run / "data" / "manifest.csv:test"),
                 "--out", str(run / "eval2"), "--tta", "2"]) == 2


@pytest.mark.slow
def test_resume_continues_the_run(run):
    assert main(["train", "--resume", str(run / "run"), "--epochs", "2"]) == 0
    assert list(pd.read_csv(run / "run" / "history.csv")["epoch"]) == [0, 1]


@pytest.mark.slow
def test_predict_writes_images_and_vertebrae(run, tmp_path):
    ckpt = run / "run" / "checkpoints" / "last.ckpt"
    out = tmp_path / "p" / "predictions.csv"
    assert main(["predict", "--model", str(ckpt), str(run / "data" / "test"), "--out", str(out),
                 "--threshold", "0.5"]) == 0
    pred, v = pd.read_csv(out), pd.read_csv(out.with_name("vertebrae.csv"))
    assert list(pred.columns)[:6] == [*IMAGE_COLUMNS, *FAMILIES["vertebra"].extra_columns]
    assert (pred["predicted"] == (pred["max_grade"] >= 1)).all()
    assert set(v["file"]) <= set(pred["file"]) and len(pred) == len(list((run / "data" / "test").rglob("*.png")))
    # never overwritten without --force; options a per-vertebra model cannot honour are refused
    assert main(["predict", "--model", str(ckpt), str(run / "data" / "test"), "--out", str(out)]) == 2
    assert main(["predict", "--model", str(ckpt), str(run / "data" / "test"), "--out", str(tmp_path / "q.csv"),
                 "--tta", "2"]) == 2
    # --dicom-out is wired to the per-vertebra path too: PNG inputs have no study to attach to
    assert main(["predict", "--model", str(ckpt), str(run / "data" / "test"), "--out", str(tmp_path / "r.csv"),
                 "--dicom-out", str(tmp_path / "pacs")]) == 2
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.slow
def test_heatmap_draws_outlines(run):
    ckpt = run / "run" / "checkpoints" / "last.ckpt"
    out = run / "outlines"
    assert main(["heatmap", "--model", str(ckpt), "--data", str(run / "data" / "test"), "--out", str(out)]) == 0
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == len(list((run / "data" / "test").rglob("*.png")))
    assert (out / "vertebrae.csv").is_file()
    assert main(["heatmap", "--model", str(ckpt), "--data", str(run / "data" / "test"), "--out", str(out)]) == 2
