"""The per-vertebra report says how each CI was made, marks the goals not met, and says why each example
overlay was chosen and what its reading gets wrong (vfa.evaluation.vertebra_eval)."""
import re

import pandas as pd

from tests.vertebra.helpers import scene, several_images
from vfa.evaluation import vertebra_eval as ve
from vfa.evaluation import vertebra_metrics as vm


def test_examples_are_the_highest_then_the_lowest_image_scores_with_why():
    frame = pd.DataFrame({"raw": [0.2, 0.9, 0.5, 0.05, 0.7, 0.3]})
    chosen = ve._examples(frame, 4)  # 3 highest, then 1 lowest
    assert list(chosen) == [1, 4, 2, 3]
    assert chosen[1] == "highest image score, #1 of 6 (raw 0.900)"
    assert chosen[2] == "highest image score, #3 of 6 (raw 0.500)"
    assert chosen[3] == "lowest image score, #6 of 6 (raw 0.050)"
    assert list(ve._examples(frame.iloc[:2], 8)) == [1, 0]  # fewer images than overlays: each once


def test_report_marks_goals_not_met_and_captions_each_example():
    out = vm.bootstrap(several_images(4), n=20)
    out["image_auc"] = {"auc": 0.9, "ci": [0.8, 1.0]}
    result = {"vertebrae": out, "reading": ve.reading("rules", "training")}
    truth, pred = scene()
    caption = "truth: fractured; read: fractured; " + vm.describe_image(vm.match_image(0, truth, pred), len(pred))
    drawn = [{"name": "a.png", "png": b"\x89PNG", "chosen": "highest image score, #1 of 4 (raw 0.950)",
              "caption": caption}]
    page = ve._html(result, "data/manifest.csv", drawn)
    kappa = re.search(r"<td>Grade agreement.*?</tr>", page, re.S).group(0)
    assert "not met" in kappa and "bootstrap over images" in kappa
    recall = re.search(r"<td>Detection recall.*?</tr>", page, re.S).group(0)
    assert "Wilson; over images" in recall and "not met" in recall
    assert "treats the bodies as independent" in page
    figure = re.search(r"<figure>.*?</figure>", page, re.S).group(0)
    assert "highest image score, #1 of 4" in figure and "missed 1 of 7: T10 (fractured, grade 2)" in figure
    assert "wrong level: T5 labelled T6" in figure
    assert "grading: rules" in page and "training set&#x27;s share of fractured bodies" in page   # who calls
    md = ve._report(result, vm.table_lines(out, out["image_auc"]), "data/manifest.csv", drawn)
    assert "- a.png: highest image score, #1 of 4 (raw 0.950). truth: fractured" in md
    assert "**not met**" in md and "treats the bodies as independent" in md
