"""`vfa compare`: McNemar uses the class each file's chosen score gives (`--score-b` included)."""
import json

import numpy as np
import pandas as pd
import pytest

from vfa.cli import main
from vfa.config import ConfigError
from vfa.evaluation.compare import compare


def write_eval(folder, raw, tta_max, label, primary="raw", thresholds=(0.5, 0.5)):
    """A predictions.csv + metrics.json pair as `vfa evaluate --tta` writes them."""
    folder.mkdir(parents=True)
    frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(len(label))], "file": "x", "label": label,
                          "raw": raw, "tta_mean": raw, "tta_max": tta_max})
    frame["predicted"] = (frame[primary] >= dict(zip(("raw", "tta_max"), thresholds))[primary]).astype(int)
    frame.to_csv(folder / "predictions.csv", index=False)
    scores = {"raw": {"threshold": thresholds[0]}, "tta_mean": {"threshold": thresholds[0]},
              "tta_max": {"threshold": thresholds[1]}}
    (folder / "metrics.json").write_text(json.dumps({"score": primary, "threshold": scores[primary]["threshold"],
                                                     "scores": scores}))
    return folder / "predictions.csv"


def test_score_b_decides_the_mcnemar_classes(tmp_path, capsys):
    label = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    raw = np.array([0.9, 0.8, 0.3, 0.2, 0.1, 0.2, 0.6, 0.1])
    tta_max = np.array([0.9, 0.9, 0.9, 0.9, 0.1, 0.2, 0.3, 0.1])  # every fracture found at 0.5
    a = write_eval(tmp_path / "a", raw, raw, label)
    b = write_eval(tmp_path / "b", raw, tta_max, label, thresholds=(0.5, 0.5))
    same = compare(a, b)  # B's raw score: its predicted column agrees with A's
    assert same["sn_b"] == 0.5 and same["mcnemar_sn"]["b"] == same["mcnemar_sn"]["c"] == 0
    res = compare(a, b, score="raw", score_b="tta_max")
    assert (res["score_b"], res["threshold_b"]) == ("tta_max", 0.5)
    assert res["sn_a"] == 0.5 and res["sn_b"] == 1.0 and res["sp_b"] == 1.0
    assert (res["mcnemar_sn"]["b"], res["mcnemar_sn"]["c"]) == (0, 2)  # two fractures only B finds
    assert (res["mcnemar_sp"]["b"], res["mcnemar_sp"]["c"]) == (0, 1)  # one normal only B clears
    assert main(["compare", str(a), str(b), "--score-b", "tta_max"]) == 0
    assert "Sn A 0.5000  B 1.0000" in capsys.readouterr().out


def test_a_score_without_a_known_threshold_is_refused(tmp_path):
    label = np.array([1, 0, 1, 0])
    a = write_eval(tmp_path / "a", [0.9, 0.1, 0.8, 0.2], [0.9, 0.1, 0.8, 0.2], label)
    (tmp_path / "a" / "metrics.json").unlink()
    with pytest.raises(ConfigError, match="no threshold known for 'tta_max'"):
        compare(a, a, score="tta_max")


def test_ids_that_differ_by_a_root_match_on_the_image_file(tmp_path, capsys):
    """The same images evaluated as a folder (norm/x.png) and as manifest.csv:test (test/norm/x.png)."""
    label = np.array([1, 1, 0, 0])
    raw = np.array([0.9, 0.4, 0.6, 0.1])
    a = write_eval(tmp_path / "a", raw, raw, label)
    b = write_eval(tmp_path / "b", raw, raw, label)
    names = ["frac/f0.png", "frac/f1.png", "norm/n0.png", "norm/n1.png"]
    for path, root in ((a, ""), (b, "test/")):
        frame = pd.read_csv(path)
        frame["image_id"] = [root + n for n in names]
        frame.to_csv(path, index=False)
    res = compare(a, b)
    assert res["n"] == 4 and res["only_in_a"] == res["only_in_b"] == 0
    assert res["matched_by"] == "image file: IDs differ by a root, e.g. A 'frac/f0.png' = B 'test/frac/f0.png'"
    assert main(["compare", str(a), str(b)]) == 0
    assert "4 images matched by image file: IDs differ by a root" in capsys.readouterr().out


def test_an_ending_shared_by_two_files_is_not_a_match():
    from vfa.evaluation.compare import match_by_ending

    assert match_by_ending(["norm/x.png", "frac/y.png"], ["test/norm/x.png", "/data/test/frac/y.png"]) == {
        "test/norm/x.png": "norm/x.png", "/data/test/frac/y.png": "frac/y.png"}
    assert match_by_ending(["x.png"], ["test/norm/x.png", "val/norm/x.png"]) == {}  # which one? neither
    assert match_by_ending(["a/test/x.png", "b/test/x.png"], ["test/x.png"]) == {}
    assert match_by_ending(["norm/x.png"], ["norm/x.png.bak"]) == {}  # whole parts only


def test_no_ids_in_common_shows_an_example_of_each(tmp_path, capsys):
    label = np.array([1, 0])
    a = write_eval(tmp_path / "a", [0.9, 0.1], [0.9, 0.1], label)
    b = write_eval(tmp_path / "b", [0.9, 0.1], [0.9, 0.1], label)
    frame = pd.read_csv(b)
    frame["image_id"] = ["P1_scan.png", "P2_scan.png"]
    frame.to_csv(b, index=False)
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no image IDs in common" in err
    assert "A: 2 images, e.g. 'i0'; B: 2 images, e.g. 'P1_scan.png'" in err and "--id-regex" in err
