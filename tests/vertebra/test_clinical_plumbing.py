"""A tiny per-vertebra run on the clinical phantom (two vendors, unreadable upper levels, mimics)
through the CLI: training learns the readability head from the truth's `readable`, and the test
evaluation writes the readability metrics and the breakdown. Plumbing and output shape only."""
import json

import pandas as pd
import pytest

from tests.vertebra.test_end_to_end import TINY
from vfa.cli import main


@pytest.mark.slow
def test_a_clinical_run_reports_readability_and_the_breakdown(tmp_path):
    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), "--vendor", "mixed", "--n", "24", "--size", "224x128",
                 "--prevalence", "0.5", "--seed", "2"]) == 0
    m = str(data / "manifest.csv")
    sets = [a for s in [*TINY, "data.size=[224,128]"] for a in ("--set", s)]   # the clinical phantom: >= 128 px
    assert main(["train", "--preset", "vertebra-demo", "--train", f"{m}:train", "--val", f"{m}:val",
                 "--test", f"{m}:test", "--out", str(tmp_path / "run"), *sets]) == 0
    v = json.loads((tmp_path / "run" / "test_metrics.json").read_text())["vertebrae"]
    assert {"readable_agreement", "not_evaluable"} <= set(v)
    bd = v["breakdown"]
    assert list(bd) == ["vendor", "grade", "band", "mimic"]
    assert set(bd["vendor"]) <= {"hologic", "lunar"} and bd["vendor"]
    assert list(bd["band"]) == ["T4-T6", "T7-T12", "L1-L4"]
    for group in bd["vendor"].values():
        assert {"n", "sensitivity", "specificity", "readable_agreement"} <= set(group)
    assert all({"n", "k", "false_positive_rate", "ci"} <= set(g) for g in bd["mimic"].values())
    truth = pd.read_csv(data / "vertebrae.csv")
    test_files = set(pd.read_csv(m).query("split == 'test'")["filename"])
    assert v["n"]["unreadable"] == int((truth["filename"].isin(test_files) & (truth["readable"] == 0)).sum())
    bodies = pd.read_csv(tmp_path / "run" / "test_vertebrae.csv")
    assert {"evaluable", "p_readable"} <= set(bodies.columns)
    assert (bodies["grade"].isna() == (bodies["evaluable"] == 0)).all()
