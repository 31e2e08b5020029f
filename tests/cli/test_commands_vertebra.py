"""Every `vfa` command that takes a model or a preset, run once through the CLI with the
per-vertebra family (test_commands.py runs each with the image family): it runs, or it refuses
before any work with one line naming the reason. The outputs it writes follow the image-level
contract (vfa.registry.IMAGE_COLUMNS), so compare, cohort and review take them."""
import json

import pandas as pd
import pytest
import torch

from tests.helpers import make_checkpoint
from vfa import checkpoint, config
from vfa.cli import build_parser, main
from vfa.registry import FAMILIES, IMAGE_COLUMNS

pytestmark = pytest.mark.slow
COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)

TINY = ["data.size=[192,112]", "vertebra.detector_size=[96,56]", "vertebra.crop_size=32", "vertebra.width=16",
        "vertebra.detector_backbone=resnet10t", "vertebra.landmark_backbone=resnet10t", "data.batch_size=4",
        "data.num_workers=0", "trainer.logger=none", "trainer.progress=false", "trainer.precision=32-true"]
SETS = [a for s in TINY for a in ("--set", s)]
# commands that read neither a model nor a preset's family: the same for both families
# (node: both families read through it, against a real PACS, in tests/node)
FAMILY_FREE = {"synth", "split", "check-data", "augment-preview", "runs", "import-keras", "node",
               "cross-vendor"}  # cross-vendor reads either family's metrics.json, no model


@pytest.fixture(scope="module")
def vert(tmp_path_factory):
    """A tiny phantom with its vertebrae.csv and a random-weight per-vertebra checkpoint."""
    root = tmp_path_factory.mktemp("cli-vertebra")
    assert main(["synth", "--out", str(root / "data"), "--n", "24", "--size", "192x112", "--prevalence", "0.5"]) == 0
    cfg = config.resolve("vertebra-demo", overrides=config.parse_set(TINY))
    torch.manual_seed(0)
    net = FAMILIES.of(cfg).step("build")(cfg)
    # random weights with CenterNet's prior find no body; a confident centre head makes them read
    # (random) bodies, so the image calls vary as the cohort analysis needs
    net.detector.heads["heat"][-1].bias.data.fill_(4.0)
    m = root / "data" / "manifest.csv"
    return {"ckpt": str(checkpoint.save(root / "v.ckpt", net, cfg, force=True)), "root": root, "data": root / "data",
            "test": f"{m}:test", "train": f"{m}:train", "val": f"{m}:val",
            "image_ckpt": str(make_checkpoint(root / "image.ckpt"))}


def _predict(v, tmp):
    out = tmp / "pred" / "predictions.csv"
    assert main(["predict", "--model", v["ckpt"], str(v["data"]), "--out", str(out), "--device", "cpu"]) == 0
    return out


def _contract(frame: pd.DataFrame, label: bool = False) -> None:
    front = ["image_id", "file", *(["label"] if label else []), *IMAGE_COLUMNS[2:]]
    assert list(frame.columns[:len(front)]) == front
    assert set(FAMILIES["vertebra"].extra_columns) <= set(frame.columns)
    assert (frame["predicted"] == (frame["max_grade"] >= 1)).all()  # the image is fractured when a body is


RUNS = {
    "summary": lambda v, t: ["summary", "--preset", "vertebra-demo", *SETS],
    "train": lambda v, t: ["train", "--preset", "vertebra-demo", "--train", v["train"], "--val", v["val"],
                           "--test", v["test"], "--out", str(t / "run"), "--epochs", "1", "--device", "cpu", *SETS],
    "evaluate": lambda v, t: ["evaluate", "--model", v["ckpt"], "--data", v["test"], "--out", str(t / "ev"),
                              "--device", "cpu", "--threshold", "0.3"],
    "predict": lambda v, t: ["predict", "--model", v["ckpt"], v["test"], "--out", str(t / "p.csv"), "--device", "cpu"],
    "heatmap": lambda v, t: ["heatmap", "--model", v["ckpt"], "--data", str(v["data"] / "test"), "--out",
                             str(t / "hm"), "--device", "cpu"],
    "compare": lambda v, t: _compare(v, t),
    "synth-cohort": lambda v, t: ["synth-cohort", "--predictions", str(_predict(v, t)), "--out", str(t / "o.csv")],
    "cohort": lambda v, t: _cohort(v, t),
    "review": lambda v, t: _review(v, t),
}
REFUSED = {
    "calibrate": lambda v, t: ["calibrate", "--model", v["ckpt"], "--data", v["val"], "--out", str(t / "c.ckpt")],
    "ensemble": lambda v, t: ["ensemble", "--model", v["ckpt"], "--model", v["ckpt"], "--out", str(t / "e.yaml")],
    "export": lambda v, t: ["export", "--model", v["ckpt"], "--out", str(t / "m.onnx")],
    "cv": lambda v, t: ["cv", "--preset", "vertebra-demo", "--data", str(v["data"] / "manifest.csv"), "--folds", "2",
                        "--out", str(t / "cv"), *SETS],
    "lr-find": lambda v, t: ["lr-find", "--preset", "vertebra-demo", "--train", v["train"], "--out", str(t / "lr"),
                             *SETS],
}


def _compare(v, t):
    """The per-vertebra reading against an image-level model on the same images, paired by image_id."""
    a, b = t / "a", t / "b"
    assert main(["evaluate", "--model", v["ckpt"], "--data", v["test"], "--out", str(a), "--device", "cpu"]) == 0
    assert main(["evaluate", "--model", v["image_ckpt"], "--data", v["test"], "--out", str(b), "--device", "cpu",
                 "--gallery", "0"]) == 0
    return ["compare", str(a / "predictions.csv"), str(b / "predictions.csv")]


def _cohort(v, t):
    """The score exposure, split at its median: random weights call every image fractured (some
    random body always breaks the rules), so the written call alone has no unexposed group."""
    pred = _predict(v, t)
    cut = str(float(pd.read_csv(pred)["raw"].median()))
    assert main(["synth-cohort", "--predictions", str(pred), "--out", str(t / "o.csv"), "--threshold", cut]) == 0
    return ["cohort", "--predictions", str(pred), "--outcomes", str(t / "o.csv"), "--out", str(t / "cohort"),
            "--exposure", "raw", "--threshold", cut]


def _review(v, t):
    pred = _predict(v, t)
    assert main(["review", "--predictions", str(pred), "--images", str(v["data"]), "--vertebrae",
                 str(pred.with_name("vertebrae.csv")), "--db", str(t / "r.sqlite"), "--dry-run"]) == 0
    return ["review", "export", "--db", str(t / "r.sqlite"), "--out", str(t / "reads.csv")]


def test_every_command_is_covered_for_both_families():
    assert sorted(set(RUNS) | set(REFUSED) | FAMILY_FREE) == COMMANDS
    assert not set(RUNS) & set(REFUSED)


@pytest.mark.parametrize("command", sorted(RUNS))
def test_runs_with_a_per_vertebra_model(command, vert, tmp_path, capsys):
    rc = main(RUNS[command](vert, tmp_path))
    out = capsys.readouterr()
    assert rc == 0, out.err
    if command == "summary":
        assert "landmark network" in out.out and "parameters: detector" in out.out
    if command == "train":
        assert json.loads((tmp_path / "run" / "test_metrics.json").read_text())["family"] == "vertebra"
        _contract(pd.read_csv(tmp_path / "run" / "test_predictions.csv"), label=True)
    if command == "evaluate":
        _contract(pd.read_csv(tmp_path / "ev" / "predictions.csv"), label=True)
    if command == "predict":
        _contract(pd.read_csv(tmp_path / "p.csv"))


@pytest.mark.parametrize("command", sorted(REFUSED))
def test_refused_up_front_naming_the_reason(command, vert, tmp_path, capsys):
    rc = main(REFUSED[command](vert, tmp_path))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "per-vertebra" in err and command in err, err
    assert not any(tmp_path.iterdir()), "refused after writing something"


@pytest.mark.parametrize("option", [["--tta", "2"], ["--score", "tta_mean"], ["--backend", "onnxruntime"],
                                    ["--set", "trainer.devices=2"]])
def test_predict_refuses_what_the_family_cannot_honour(option, vert, tmp_path, capsys):
    rc = main(["predict", "--model", vert["ckpt"], vert["test"], "--out", str(tmp_path / "p.csv"), *option])
    err = capsys.readouterr().err
    assert rc == 2 and option[0] in err and "per-vertebra" in err, err
    assert not (tmp_path / "p.csv").exists()
