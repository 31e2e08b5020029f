"""Files named by their DICOM UIDs (as PACS exports them) leave no UID in any output by default."""
import numpy as np
import pandas as pd
import pytest

from tests.helpers import make_checkpoint
from vfa.cli import main
from vfa.io import write_dicom
from vfa.io.identifiers import public_path

STUDY = "1.2.826.0.1.3680043.8.498.1"
SOPS = [f"1.2.826.0.1.3680043.8.498.{100 + i}" for i in range(4)]


@pytest.fixture
def pacs(tmp_path):
    rng = np.random.default_rng(0)
    for i, sop in enumerate(SOPS):
        cls = "frac" if i % 2 else "norm"
        write_dicom(tmp_path / "data" / cls / STUDY / f"{sop}.dcm", (rng.random((64, 40)) * 255).astype(np.uint8))
    return tmp_path / "data", make_checkpoint(tmp_path / "m.ckpt")


def no_uid(text: str) -> bool:
    return "1.2.826.0.1.3680043" not in text


def test_public_path_hashes_uids_only():
    assert public_path("frac/x.png") == "frac/x.png" and public_path("a/1.2.3/b.dcm") == "a/1.2.3/b.dcm"
    hashed = public_path(f"frac/{STUDY}/{SOPS[0]}.dcm")
    assert hashed.startswith("frac/uid-") and hashed.endswith(".dcm") and no_uid(hashed)
    assert hashed == public_path(f"frac/{STUDY}/{SOPS[0]}.dcm")  # stable
    inside = public_path(f"DX.{SOPS[0]}.dcm")  # storescp-style MODALITY.UID names
    assert inside.startswith("DX.uid-") and inside.endswith(".dcm") and no_uid(inside)
    assert public_path("scans/v1.2/x_2024.01.02.png") == "scans/v1.2/x_2024.01.02.png"  # dates, versions kept


def test_predict_evaluate_and_heatmaps_carry_no_uid(pacs, tmp_path):
    data, model = pacs
    assert main(["predict", "--model", str(model), str(data), "--out", str(tmp_path / "p.csv")]) == 0
    assert no_uid((tmp_path / "p.csv").read_text())
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "ev"),
                 "--gallery", "2"]) == 0
    for name in ("predictions.csv", "metrics.json", "report.html"):
        assert no_uid((tmp_path / "ev" / name).read_text()), name
    assert main(["heatmap", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "hm")]) == 0
    names = [p.relative_to(tmp_path / "hm").as_posix() for p in (tmp_path / "hm").rglob("*")]
    assert len([n for n in names if "heatmap_" in n]) == 4 and all(no_uid(n) for n in names)
    assert no_uid((tmp_path / "hm" / "heatmaps.csv").read_text())
    # the hashed names still lead back to the files: heatmaps of evaluate's false negatives, say
    assert main(["heatmap", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "sel"),
                 "--predictions", str(tmp_path / "ev" / "predictions.csv")]) == 0
    assert len(list((tmp_path / "sel").rglob("heatmap_*"))) == 4


def test_keep_identifiers_keeps_them(pacs, tmp_path):
    data, model = pacs
    assert main(["predict", "--model", str(model), str(data), "--out", str(tmp_path / "p.csv"),
                 "--keep-identifiers"]) == 0
    frame = pd.read_csv(tmp_path / "p.csv")
    assert frame["image_id"].str.contains(SOPS[0], regex=False).any()
