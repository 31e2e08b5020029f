"""Image-level metrics per vendor (metrics.json["breakdown"]) and the cross-vendor table of make demo-clinical."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.helpers import model_env
from vfa.cli import main as cli_main
from vfa.evaluation.breakdown import breakdown, groups_of
from vfa.evaluation.cross_vendor import HEADER, collect, format_table
from vfa.evaluation.evaluate import evaluate


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = model_env(tmp_path_factory.mktemp("breakdown"), train=1, val=1, test=6)
    files = sorted(env["test"].rglob("*.png"))
    # a manifest beside the folder (as vfa synth writes one) with a vendor per image, one image unlisted
    rows = [{"path": f.relative_to(env["root"]).as_posix(), "label": f.parent.name,
             "vendor": "hologic" if i % 2 else "lunar"} for i, f in enumerate(files[:-1])]
    pd.DataFrame(rows).to_csv(env["root"] / "manifest.csv", index=False)
    return env


def test_breakdown_matches_sklearn_per_vendor(env, tmp_path):
    m = evaluate(env["ckpt"], env["test"], tmp_path / "ev", num_workers=0, progress=False, log=lambda s: None,
                 gallery=0)
    assert "By subgroup" in (tmp_path / "ev" / "report.html").read_text()
    pred = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    manifest = pd.read_csv(env["root"] / "manifest.csv")
    vendor = dict(zip(manifest["path"].str.split("/", n=1).str[1], manifest["vendor"]))
    pred["vendor"] = pred["file"].map(vendor)
    rows = m["breakdown"]["vendor"]
    assert sorted(rows) == ["hologic", "lunar"]
    assert sum(r["n"] for r in rows.values()) == len(pred) - 1   # the unlisted image is in no group
    for name, g in pred.groupby("vendor"):
        r = rows[name]
        assert r["n"] == len(g) and r["n_frac"] == int(g["label"].sum())
        assert r["auc"] == pytest.approx(roc_auc_score(g["label"], g["raw"]), abs=1e-12)
        assert r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1]
        called = g["raw"] >= m["threshold"]
        assert r["sensitivity"] == pytest.approx(called[g["label"] == 1].mean())
        assert r["specificity"] == pytest.approx((~called)[g["label"] == 0].mean())
        assert 0 <= r["sensitivity_ci"][0] <= r["sensitivity"] <= r["sensitivity_ci"][1] <= 1


def test_no_vendor_column_no_breakdown(tmp_path):
    (tmp_path / "manifest.csv").write_text("path,label\na.png,norm\n")
    assert groups_of([str(tmp_path / "a.png")], tmp_path / "manifest.csv") == {}
    assert groups_of([str(tmp_path / "a.png")], tmp_path / "nowhere") == {}


def test_breakdown_against_sklearn_random():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.random(200)
    v = ["a" if i < 120 else "b" for i in range(200)]
    out = breakdown(y, p, 0.5, {"vendor": v})["vendor"]
    for name, keep in (("a", slice(0, 120)), ("b", slice(120, 200))):
        assert out[name]["auc"] == pytest.approx(roc_auc_score(y[keep], p[keep]))
    one_class = breakdown(np.zeros(4, int), np.linspace(0, 1, 4), 0.5, {"vendor": ["a"] * 4})["vendor"]["a"]
    assert one_class["n"] == 4 and one_class["specificity"] == 0.5   # no ROC, still its Sp


def _metrics(root, name, auc, vertebrae=None):
    (root / name).mkdir(parents=True)
    m = {"auc": auc, "auc_ci": [auc - 0.05, min(1.0, auc + 0.05)], "n": 150}
    if vertebrae is not None:
        m["vertebrae"] = vertebrae
    (root / name / "metrics.json").write_text(json.dumps(m))


def test_cross_vendor_table_reads_keys_defensively(tmp_path, capsys):
    v = {"level_accuracy": {"value": 0.97, "k": 97, "n": 100}, "sensitivity": {"value": 0.9},
         "specificity": {"value": 0.95}, "sensitivity_grade2": {"value": 1.0, "k": 3, "n": 3},
         "sensitivity_grade3": {"value": 0.0, "k": 0, "n": 1}, "grade_kappa": {"value": 0.8}}
    _metrics(tmp_path, "image-hologic/on-lunar", 0.8)
    _metrics(tmp_path, "image-hologic/on-hologic", 0.9)
    _metrics(tmp_path, "vertebra-lunar/on-lunar", 0.95, v)
    mimics = {"none": {"n": 500, "k": 9}, "schmorl": {"n": 6, "k": 1}, "physiological_wedge": {"n": 4, "k": 0}}
    _metrics(tmp_path, "vertebra-hologic/on-hologic", 0.9, {**v, "breakdown": {"mimic": mimics},
                                                            "readable_agreement": {"value": 0.93, "k": 93, "n": 100}})
    (tmp_path / "vertebra-lunar" / "on-hologic").mkdir()   # not evaluated (yet): no row
    (tmp_path / "notes").mkdir()
    rows = collect(tmp_path)
    assert [r[:3] for r in rows] == [["image", "hologic", "hologic"], ["image", "hologic", "lunar"],
                                     ["vertebra", "hologic", "hologic"], ["vertebra", "lunar", "lunar"]]
    assert all(len(r) == len(HEADER) for r in rows)
    named = dict(zip(HEADER, rows[2]))
    assert named["FP among mimics"] == "0.100" and named["not-evaluable agr."] == "0.930"   # 1/10 pooled, no none
    vert = dict(zip(HEADER, rows[3]))
    assert vert["image AUC (95% CI)"] == "0.950 (0.900-1.000)" and vert["level acc"] == "0.970"
    assert vert["Sn grade>=2"] == "0.750" and vert["kappa"] == "0.800"   # grade 2 and 3 pooled: 3/4
    assert vert["FP among mimics"] == "n/a" and vert["not-evaluable agr."] == "n/a"   # keys absent
    assert cli_main(["cross-vendor", str(tmp_path)]) in (0, None)
    assert "phantom results" in capsys.readouterr().out
    assert "no evaluations" in format_table(tmp_path / "missing")
