"""vfa review's inputs: a predictions CSV checked line by line, heatmaps and vertebrae matched to it."""
import json
import os

import pandas as pd
import pytest

from tests.app.support import write_review_set
from vfa.app.cases import ReviewError, load_cases, read_vertebrae
from vfa.cli import main


@pytest.fixture
def data(tmp_path):
    return write_review_set(tmp_path)


def test_cases_heatmaps_and_vertebrae_are_matched(data):
    cases, meta = load_cases(data["predictions"], data["images"], data["heatmaps"], data["vertebrae"])
    assert meta == {"score": "raw", "threshold": 0.5, "n": 12, "heatmaps": 6, "with_vertebrae": 3}
    assert [c.idx for c in cases] == list(range(1, 13))
    assert cases[0].heatmap.endswith("heatmap_004_img_000.png") and cases[11].heatmap is None
    assert [v["level"] for v in cases[1].vertebrae] == ["T4", "T5", "T6", "T7"]
    assert cases[1].model_grade == 3 and cases[5].vertebrae == []
    assert cases[1].vertebrae[0]["outline"][:3] == [[10, 4], [20, 5], [30, 4]]  # sup_ant -> sup_mid -> sup_post


def test_the_phantoms_vertebrae_csv_matches_by_path_suffix(data, tmp_path):
    frame = pd.read_csv(data["vertebrae"]).rename(columns={"file": "filename"})
    frame["filename"] = "test/" + frame["filename"]  # vfa synth's vertebrae.csv: relative to the phantom
    frame.to_csv(tmp_path / "v.csv", index=False)
    cases, _ = load_cases(data["predictions"], data["images"], vertebrae=tmp_path / "v.csv")
    assert len(cases[0].vertebrae) == 4


def test_metrics_json_gives_the_score_and_threshold(data):
    (data["predictions"].parent / "metrics.json").write_text('{"score": "raw", "threshold": 0.3}')
    cases, meta = load_cases(data["predictions"], data["images"])
    assert meta["threshold"] == 0.3
    assert load_cases(data["predictions"], data["images"], threshold=0.7)[1]["threshold"] == 0.7


def test_without_images_the_folder_vfa_evaluate_read_is_used(data):
    (data["predictions"].parent / "metrics.json").write_text(json.dumps({"data": str(data["images"])}))
    cases, _ = load_cases(data["predictions"])
    assert cases[0].path == str((data["images"] / "norm/img_000.png").resolve())
    (data["predictions"].parent / "metrics.json").write_text(json.dumps({"data": "/nonexistent"}))
    with pytest.raises(ReviewError, match="line 2: image file not found: norm/img_000.png"):
        load_cases(data["predictions"])


def _edit(data, fn):
    frame = pd.read_csv(data["predictions"], dtype=str)
    frame = fn(frame)
    frame.to_csv(data["predictions"], index=False)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.drop(columns=["file"]), "no 'file' column"),
    (lambda f: f.drop(columns=["raw"]), "no P(fracture) column"),
    (lambda f: f.assign(raw=["x"] + list(f["raw"][1:])), "line 2: 'raw' is not a number"),
    (lambda f: f.assign(raw=list(f["raw"][:3]) + ["1.5"] + list(f["raw"][4:])), "line 5: 'raw' = 1.5 is outside"),
    (lambda f: f.assign(file=list(f["file"][:2]) + ["norm/missing.png"] + list(f["file"][3:])),
     "line 4: image file not found: norm/missing.png"),
    (lambda f: f.assign(image_id=["same"] * len(f)), "line 3: image 'same' is listed twice (first on line 2)"),
])
def test_bad_predictions_are_one_line_naming_file_and_line(data, edit, message):
    _edit(data, edit)
    with pytest.raises(ReviewError, match=None) as err:
        load_cases(data["predictions"], data["images"])
    assert message in str(err.value) and str(data["predictions"]) in str(err.value)


def test_unreadable_csv_and_cli_exit_code(data, tmp_path, capsys):
    data["predictions"].write_bytes(b"file,raw\n\"unterminated,0.3\n")
    args = ["review", "--predictions", str(data["predictions"]), "--images", str(data["images"]),
            "--db", str(tmp_path / "r.sqlite"), "--dry-run"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("vfa review: error: ") and "Traceback" not in err and err.count("\n") == 1


def test_a_symlink_out_of_the_images_folder_is_refused(data, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes((data["images"] / "norm/img_000.png").read_bytes())
    os.symlink(secret, data["images"] / "norm/link.png")
    _edit(data, lambda f: f.assign(file=["norm/link.png"] + list(f["file"][1:])))
    with pytest.raises(ReviewError, match="line 2: norm/link.png resolves outside"):
        load_cases(data["predictions"], data["images"])


def test_a_heatmap_symlink_out_of_the_folder_is_not_indexed(data, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not an overlay")
    (data["heatmaps"] / "frac" / "heatmap_099_img_011.png").symlink_to(secret)
    cases, meta = load_cases(data["predictions"], data["images"], data["heatmaps"])
    assert cases[11].heatmap is None and meta["heatmaps"] == 6


def test_bad_vertebrae_lines(data, tmp_path):
    frame = pd.read_csv(data["vertebrae"], dtype=str)
    frame.loc[2, "level"] = "C7"
    frame.to_csv(tmp_path / "v.csv", index=False)
    with pytest.raises(ReviewError, match="line 4: unknown level 'C7'"):
        read_vertebrae(tmp_path / "v.csv")
    frame.loc[2, "level"], frame.loc[1, "grade"] = "T6", "5"
    frame.to_csv(tmp_path / "v.csv", index=False)
    with pytest.raises(ReviewError, match="line 3: 'grade' = 5.0 is outside"):
        read_vertebrae(tmp_path / "v.csv")


def test_a_db_that_is_not_sqlite_or_a_busy_port_is_one_line(data, tmp_path, capsys):
    import socket

    bad = tmp_path / "notes.sqlite"
    bad.write_text("these are my notes, not a database\n" * 100)
    base = ["review", "--predictions", str(data["predictions"]), "--images", str(data["images"])]
    assert main([*base, "--db", str(bad), "--dry-run"]) == 2
    assert "not a usable vfa review database" in capsys.readouterr().err
    assert main([*base, "--db", str(tmp_path / "no" / "r.sqlite"), "--dry-run"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main([*base, "--db", str(tmp_path / "r.sqlite"), "--port", str(s.getsockname()[1])]) == 2
    assert "cannot serve on 127.0.0.1:" in capsys.readouterr().err
