"""End-to-end from DICOM: a tiny MONOCHROME1 16-bit phantom, trained from its manifest, then
evaluate and predict read the files through the checkpoint's normalization."""
import json

import pandas as pd
import pydicom
import pytest

from tests.helpers import TINY
from vfa.cli import main as cli_main


@pytest.mark.slow
def test_train_evaluate_predict_from_dicom(tmp_path, capsys):
    data, run = tmp_path / "dcm", tmp_path / "run"
    assert cli_main(["synth", "--out", str(data), "--n", "40", "--size", "160x96", "--prevalence", "0.5",
                     "--seed", "2", "--bit-depth", "16", "--format", "dicom-mono1"]) == 0
    files = sorted(data.rglob("*.dcm"))
    assert len(files) == 40
    ds = pydicom.dcmread(files[0])
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 16
    assert ds.PatientName == "PHANTOM^SYNTHETIC" and str(ds.PatientID).startswith("PHANTOM-")
    assert cli_main(["check-data", str(data / "manifest.csv")]) == 0
    assert "DICOM: 40" in capsys.readouterr().out

    # --train MANIFEST: train and val are its splits; --test MANIFEST: its test split
    args = ["train", "--preset", "cpu-demo", "--train", str(data / "manifest.csv"),
            "--test", str(data / "manifest.csv"), "--out", str(run), "--epochs", "1",
            "--set", "data.normalize=percentile:1,99"]
    for item in TINY:
        args += ["--set", item]
    assert cli_main(args) == 0
    history = pd.read_csv(run / "history.csv")
    n_val = (pd.read_csv(data / "manifest.csv")["split"] == "val").sum()
    assert list(history["epoch"]) == [0] and history["n"][0] == n_val
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["n"] == (pd.read_csv(data / "manifest.csv")["split"] == "test").sum()

    import vfa

    model = vfa.load_model(run / "checkpoints" / "best.ckpt")
    assert model.config.data.normalize == "percentile:1,99"  # predict/evaluate normalize as training did
    out = tmp_path / "pred.csv"
    assert cli_main(["predict", "--model", str(run / "checkpoints" / "best.ckpt"), str(data / "val"),
                     "--out", str(out)]) == 0
    pred = pd.read_csv(out)
    assert len(pred) == n_val and pred["raw"].between(0, 1).all()
    assert "PatientID" not in pred.columns and not pred.astype(str).apply(
        lambda c: c.str.contains("PHANTOM-P")).any().any()
    assert cli_main(["predict", "--model", str(run / "checkpoints" / "best.ckpt"), str(data / "val"),
                     "--out", str(out), "--force", "--keep-identifiers"]) == 0
    assert pd.read_csv(out)["PatientID"].str.startswith("PHANTOM-P").all()
    # a manifest as input, image IDs from a column of it
    assert cli_main(["predict", "--model", str(run / "checkpoints" / "best.ckpt"), f"{data / 'manifest.csv'}:val",
                     "--id-column", "patient_id", "--out", str(out), "--force"]) == 0
    pred = pd.read_csv(out)
    assert len(pred) == n_val and pred["image_id"].str.match(r"P\d{5}$").all()
