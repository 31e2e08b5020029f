import numpy as np
import pandas as pd
import pytest

from vfa.cli import main as cli_main
from vfa.data.samples import DataError
from vfa.data.split import run_split, split_manifest


def manifest(n_patients=60, seed=0):
    """Patients with 1-4 images each; about a quarter fractured (all of a patient's images share a label)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = "frac" if rng.random() < 0.25 else "norm"
        for k in range(int(rng.integers(1, 5))):
            rows.append({"path": f"img/p{p:03d}_{k}.png", "label": label, "patient_id": f"P{p:03d}"})
    return pd.DataFrame(rows)


def test_patient_level_stratified_and_deterministic():
    frame = manifest()
    out = split_manifest(frame, "patient_id", "label", (0.7, 0.15, 0.15), seed=3)
    assert (out.groupby("patient_id")["split"].nunique() == 1).all()  # no patient in two splits
    shares = out["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.08 and abs(shares["val"] - 0.15) < 0.08
    for split in ("train", "val", "test"):  # both classes everywhere, near the overall prevalence
        part = out[out["split"] == split]
        assert set(part["label"]) == {"norm", "frac"}
        assert abs((part["label"] == "frac").mean() - (frame["label"] == "frac").mean()) < 0.12
    again = split_manifest(frame, "patient_id", "label", (0.7, 0.15, 0.15), seed=3)
    pd.testing.assert_frame_equal(out, again)
    other = split_manifest(frame, "patient_id", "label", (0.7, 0.15, 0.15), seed=4)
    assert not out["split"].equals(other["split"])


def test_folds_with_held_out_test():
    out = split_manifest(manifest(), "patient_id", "label", (0.85, 0.15), folds=5, seed=0)
    assert (out.groupby("patient_id")["split"].nunique() == 1).all()
    rest = out[out["split"] != "test"]
    assert (rest.groupby("patient_id")["fold"].nunique() == 1).all()
    assert sorted(set(rest["fold"])) == [0, 1, 2, 3, 4]
    assert (out.loc[out["split"] == "test", "fold"] == "").all()
    sizes = rest["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 0.1 * len(rest) + 4


@pytest.mark.parametrize("kwargs, reason", [
    ({"by": "subject"}, "no column 'subject'"), ({"ratios": (0.5, 0.6)}, "--ratios"),
    ({"folds": 1}, "--folds must be >= 2")])
def test_bad_arguments(kwargs, reason):
    with pytest.raises(DataError, match=reason):
        split_manifest(manifest(5), **kwargs)


def test_empty_patient_refused():
    frame = manifest(5)
    frame.loc[2, "patient_id"] = ""
    with pytest.raises(DataError, match="empty 'patient_id' on CSV line"):
        split_manifest(frame)


def test_cli_writes_a_new_manifest_with_rebased_paths(tmp_path, capsys):
    src = tmp_path / "data" / "m.csv"
    src.parent.mkdir()
    manifest(20).to_csv(src, index=False)
    out = tmp_path / "splits" / "m_split.csv"
    assert cli_main(["split", str(src), "--out", str(out), "--ratios", "0.6,0.2,0.2"]) == 0
    text = capsys.readouterr().out
    assert "patients" in text and "no patient_id in two splits" in text
    written = pd.read_csv(out)
    assert written["path"].str.startswith("../data/img/").all() and set(written["split"]) == {"train", "val", "test"}
    assert cli_main(["split", str(src), "--out", str(out)]) == 2  # exists: needs --force
    assert "--force" in capsys.readouterr().err
    assert cli_main(["split", str(tmp_path / "nope.csv")]) == 2
    assert "manifest not found" in capsys.readouterr().err
    path, _ = run_split(src, seed=1)
    assert path == src.with_name("m_split.csv") and pd.read_csv(path)["path"].str.startswith("img/").all()
