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
