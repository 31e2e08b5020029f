"""reads.csv and agreement.json: one row per image and reader, kappas as scikit-learn computes them."""
import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import cohen_kappa_score

from tests.app.support import login, post_read, prepared_app, write_review_set
from vfa.app import ReviewError, export_reads
from vfa.cli import main


@pytest.fixture
def reads(tmp_path):
    """Two readers (alice reads all 20 cases, amending two; bob reads 16) and their calls."""
    data = write_review_set(tmp_path / "set", n=20)
    db = tmp_path / "review.sqlite"
    app = prepared_app(data, db)
    rng = np.random.default_rng(3)
    calls = {"alice": {}, "bob": {}}
    for reader, n in (("alice", 20), ("bob", 16)):
        c = TestClient(app)
        csrf = login(c, reader)
        for idx in range(1, n + 1):
            grade = int(rng.integers(0, 4))
            assert post_read(c, csrf, idx, fracture=int(grade > 0), grade=grade).status_code == 200
            calls[reader][idx] = (int(grade > 0), grade)
        if reader == "alice":  # amendments: only the current read counts
            for idx in (1, 2):
                grade = 3 - calls[reader][idx][1]
                post_read(c, csrf, idx, fracture=int(grade > 0), grade=grade)
                calls[reader][idx] = (int(grade > 0), grade)
    return {"data": data, "db": db, "calls": calls, "app": app}


def test_export_one_row_per_image_and_reader(reads, tmp_path):
    done = export_reads(reads["db"], tmp_path / "reads.csv", agreement_out=tmp_path / "agreement.json")
    frame = pd.read_csv(tmp_path / "reads.csv")
    assert done["rows"] == 36 == len(frame) and not frame.duplicated(["image_id", "reader"]).any()
    alice = frame[frame.reader == "alice"].set_index("image_id")
    assert alice.loc["img_000", "version"] == 2 and alice.loc["img_000", "grade"] == reads["calls"]["alice"][1][1]
    assert set(frame.columns) >= {"image_id", "file", "path", "reader", "label", "grade", "raw", "predicted"}
    assert (frame["label"] == (frame["grade"] > 0)).all()
    with pytest.raises(FileExistsError, match="--force"):
        export_reads(reads["db"], tmp_path / "reads.csv")
    one = export_reads(reads["db"], tmp_path / "reads.csv", reader="bob", force=True)
    assert one["rows"] == 16 and pd.read_csv(tmp_path / "reads.csv")["path"].map(lambda p: p.endswith(".png")).all()
    with pytest.raises(ReviewError, match="no reads by reader 'carol'"):
        export_reads(reads["db"], tmp_path / "x.csv", reader="carol")
    with pytest.raises(ReviewError, match="not found"):
        export_reads(tmp_path / "missing.sqlite", tmp_path / "y.csv")


def test_agreement_matches_scikit_learn(reads, tmp_path):
    export_reads(reads["db"], tmp_path / "reads.csv", agreement_out=tmp_path / "agreement.json")
    result = json.loads((tmp_path / "agreement.json").read_text())
    a, b = reads["calls"]["alice"], reads["calls"]["bob"]
    common = sorted(set(a) & set(b))
    pair = result["pairs"][0]
    assert (pair["a"], pair["b"], pair["n"]) == ("alice", "bob", 16)
    assert pair["fracture"]["kappa"] == pytest.approx(cohen_kappa_score([a[i][0] for i in common],
                                                                        [b[i][0] for i in common]))
    for w in ("linear", "quadratic"):
        assert pair[f"grade_{w}"]["kappa"] == pytest.approx(
            cohen_kappa_score([a[i][1] for i in common], [b[i][1] for i in common], weights=w))
        lo, hi = pair[f"grade_{w}"]["kappa_ci"]
        assert lo < pair[f"grade_{w}"]["kappa"] < hi
    po = np.mean([a[i][0] == b[i][0] for i in common])
    assert pair["fracture"]["pabak"] == pytest.approx(2 * po - 1)
    model = pd.read_csv(reads["data"]["predictions"])["predicted"].tolist()
    vs = {v["reader"]: v for v in result["vs_model"]}
    assert vs["alice"]["fracture"]["kappa"] == pytest.approx(
        cohen_kappa_score([a[i][0] for i in range(1, 21)], model))
    assert vs["alice"]["grade_linear"]["n"] == 3  # the model's grades: the three cases with vertebrae
    c = TestClient(reads["app"])
    login(c, "carol")
    assert c.get("/agreement.json").json() == result
    page = c.get("/agreement").text
    assert f'{pair["fracture"]["kappa"]:.3f}' in page


def test_weighted_kappa_se_matches_statsmodels():
    from statsmodels.stats.inter_rater import cohens_kappa

    from vfa.cohort.agreement import weighted_kappa

    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 80)
    b = np.clip(a + rng.integers(-1, 2, 80), 0, 3)
    table = np.zeros((4, 4))
    np.add.at(table, (a, b), 1)
    for w in ("linear", "quadratic"):
        ours, ref = weighted_kappa(a, b, range(4), w), cohens_kappa(table, wt=w)
        assert ours["kappa"] == pytest.approx(ref.kappa) and ours["kappa_se"] == pytest.approx(ref.std_kappa)


def test_cli_export(reads, tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert main(["review", "export", "--db", str(reads["db"]), "--out", str(out), "--agreement",
                 str(tmp_path / "a.json")]) == 0
    assert "36 reads by alice, bob" in capsys.readouterr().out
    assert main(["review", "export", "--db", str(reads["db"]), "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["review", "export", "--db", str(reads["db"]), "--out", str(reads["db"]), "--force"]) == 2
    assert main(["review", "--db", str(reads["db"])]) == 2
    assert "needs --predictions" in capsys.readouterr().err


def test_one_readers_file_is_a_manifest_and_a_cohort_predictions_file(reads, tmp_path):
    from vfa.cohort.data import load_cohort
    from vfa.cohort.synth import synth_cohort
    from vfa.data.samples import load_samples

    out = tmp_path / "bob.csv"
    export_reads(reads["db"], out, reader="bob")
    samples = load_samples(out, split="test")  # as vfa evaluate --data bob.csv reads it: every row
    assert len(samples.paths) == 16 and samples.labels == [reads["calls"]["bob"][i][0] for i in range(1, 17)]
    synth_cohort(out, tmp_path / "outcomes.csv")
    cohort = load_cohort(out, tmp_path / "outcomes.csv", reader="label")
    assert len(cohort.frame) == 16 and cohort.frame["reader"].tolist() == [str(c) for c in samples.labels]
