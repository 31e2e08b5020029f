"""Every `vfa` command through the CLI entry point: its --help, and one tiny real run each, so a
command that crashes (as `vfa summary` once did on every preset) cannot pass CI."""
import json

import pandas as pd
import pytest

from tests.helpers import model_env
from vfa.cli import build_parser, main

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "--debug" in capsys.readouterr().out  # works after the subcommand too


def test_every_option_says_what_it_does():
    """Every argument of every command has a --help text (deprecated spellings are hidden on purpose)."""
    import argparse

    missing = [(name, a.option_strings or a.dest) for name, sub in build_parser()._subparsers._group_actions[0]
               .choices.items() for a in sub._actions
               if not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == []


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = model_env(tmp_path_factory.mktemp("cli"), train=3, val=3, test=3)
    return {**env, "data": env["train"]}


def run_summary(env, tmp):
    return ["summary", "--preset", "cpu-demo"]


def run_calibrate(env, tmp):
    return ["calibrate", "--model", str(env["ckpt"]), "--data", str(env["data"]), "--out", str(tmp / "c.ckpt"),
            "--threshold", "youden", "--device", "cpu"]


def run_lr_find(env, tmp):
    return ["lr-find", "--train", str(env["data"]), "--out", str(tmp / "lr"), "--model", str(env["ckpt"]),
            "--steps", "4", "--set", "data.batch_size=3", "--set", "data.num_workers=0", "--device", "cpu"]


def run_augment_preview(env, tmp):
    return ["augment-preview", "--data", str(env["data"]), "--out", str(tmp / "grid.png"), "--n", "2",
            "--size", "48x32"]


def run_predict(env, tmp):
    return ["predict", "--model", str(env["ckpt"]), str(env["data"]), "--out", str(tmp / "p.csv"),
            "--device", "cpu", "--threshold", "0.3"]


def run_evaluate(env, tmp):
    return ["evaluate", "--model", str(env["ckpt"]), "--data", str(env["data"]), "--out", str(tmp / "ev"),
            "--device", "cpu", "--gallery", "0"]


def run_heatmap(env, tmp):
    return ["heatmap", "--model", str(env["ckpt"]), "--data", str(env["data"]), "--out", str(tmp / "hm"),
            "--device", "cpu", "--batch-size", "2"]


def run_check_data(env, tmp):
    return ["check-data", str(env["data"])]


def run_synth(env, tmp):
    assert main(["synth", "--out", str(tmp / "bad"), "--size", "64x40"]) == 2  # one line, no traceback
    return ["synth", "--out", str(tmp / "ph"), "--n", "8", "--size", "96x64"]


def run_split(env, tmp):
    rows = [{"path": f"p{i}.png", "label": i % 2, "patient_id": f"P{i // 2}"} for i in range(20)]
    pd.DataFrame(rows).to_csv(tmp / "m.csv", index=False)
    return ["split", str(tmp / "m.csv"), "--out", str(tmp / "s.csv")]


def run_export(env, tmp):
    return ["export", "--model", str(env["ckpt"]), "--out", str(tmp / "m.onnx")]


def run_ensemble(env, tmp):
    return ["ensemble", "--model", str(env["ckpt"]), "--model", str(env["ckpt"]), "--out", str(tmp / "e.yaml")]


def run_compare(env, tmp):
    a = tmp / "a"
    assert main(["evaluate", "--model", str(env["ckpt"]), "--data", str(env["data"]), "--out", str(a),
                 "--device", "cpu", "--gallery", "0"]) == 0
    return ["compare", str(a / "predictions.csv"), str(a / "predictions.csv"), "--out", str(tmp / "c.json")]


def run_train(env, tmp):
    return ["train", "--preset", "cpu-demo", "--train", str(env["data"]), "--val", str(env["val"]),
            "--test", str(env["test"]), "--out", str(tmp / "run"), "--device", "cpu", "--epochs", "1",
            "--set", "data.size=[48,32]", "--set", "data.num_workers=0",
            "--set", "data.batch_size=3", "--set", "trainer.progress=false", "--set", "model.backbone=resnet18",
            "--set", "model.head=[8]", "--set", "trainer.precision=32-true", "--set", "optim.lr=1e-3"]


def run_cv(env, tmp):
    rows = [{"path": str(f), "label": f.parent.name, "split": split if split == "test" else "train",
             "patient_id": f"{split}-{f.stem}"}
            for split in ("train", "val", "test") for f in sorted(env[split].rglob("*.png"))]
    pd.DataFrame(rows).to_csv(tmp / "m.csv", index=False)
    return ["cv", "--preset", "cpu-demo", "--data", str(tmp / "m.csv"), "--folds", "2", "--out", str(tmp / "cv"),
            "--device", "cpu", "--epochs", "1", *run_train(env, tmp)[15:]]


def run_synth_cohort(env, tmp):
    rows = [{"image_id": f"i{k}", "raw": k / 40, "predicted": int(k >= 30)} for k in range(40)]
    pd.DataFrame(rows).to_csv(tmp / "pred.csv", index=False)
    return ["synth-cohort", "--predictions", str(tmp / "pred.csv"), "--out", str(tmp / "outcomes.csv")]


def run_cohort(env, tmp):
    assert main(run_synth_cohort(env, tmp)) == 0
    return ["cohort", "--predictions", str(tmp / "pred.csv"), "--outcomes", str(tmp / "outcomes.csv"),
            "--out", str(tmp / "cohort")]


def run_runs(env, tmp):
    return ["runs", "list", str(tmp)]


def run_cross_vendor(env, tmp):
    (tmp / "image-hologic" / "on-lunar").mkdir(parents=True)
    (tmp / "image-hologic" / "on-lunar" / "metrics.json").write_text('{"auc": 0.9, "auc_ci": [0.8, 0.95], "n": 4}')
    return ["cross-vendor", str(tmp)]


def run_import_keras(env, tmp):
    return None  # needs a Keras .h5: run through the CLI in tests/models/test_keras_import.py


def run_review(env, tmp):
    frame = pd.DataFrame({"file": [p.relative_to(env["data"]).as_posix() for p in sorted(env["data"].rglob("*.png"))]})
    frame["raw"] = [i / len(frame) for i in range(len(frame))]
    frame.to_csv(tmp / "pred.csv", index=False)
    assert main(["review", "--predictions", str(tmp / "pred.csv"), "--images", str(env["data"]),
                 "--db", str(tmp / "r.sqlite"), "--dry-run"]) == 0  # checks and loads; serving is tests/app's
    return ["review", "export", "--db", str(tmp / "r.sqlite"), "--out", str(tmp / "reads.csv")]


def run_node(env, tmp):
    from vfa.node.queue import Queue

    Queue(tmp / "store")  # an empty node store; the serving node is tests/node's, against a real PACS
    return ["node", "status", "--store", str(tmp / "store")]


RUNS = {name.removeprefix("run_").replace("_", "-"): fn for name, fn in globals().items() if name.startswith("run_")}


def test_every_command_has_a_run_here():
    assert sorted(RUNS) == COMMANDS


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "import-keras"])
def test_tiny_real_run(command, env, tmp_path, capsys):
    args = RUNS[command](env, tmp_path)
    rc = main(args)
    out = capsys.readouterr()
    assert rc == 0, out.err
    if command == "summary":
        assert "parameters:" in out.out and "FLOPs" in out.out
    if command == "train":  # the held-out test evaluation is the library's (vfa.train), not the CLI's
        assert json.loads((tmp_path / "run" / "test_metrics.json").read_text())["n"] == 6
    if command == "predict":
        frame = pd.read_csv(tmp_path / "p.csv")
        assert (frame["predicted"] == (frame["raw"] >= 0.3)).all()


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path, capsys):
    args = ["predict", "--model", str(tmp_path / "missing.ckpt"), str(tmp_path), "--out", str(tmp_path / "o.csv")]
    assert main(args) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        main(args + ["--debug"])


def test_a_device_that_is_not_here_is_one_line(env, tmp_path, capsys):
    import torch

    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: absent on every machine
    assert main(run_predict(env, tmp_path)[:-4] + ["--device", missing]) == 2
    assert "no such CUDA device" in capsys.readouterr().err


def test_old_manifest_spelling_still_works_with_a_note(env, tmp_path, capsys):
    boxes = tmp_path / "boxes.csv"
    pd.DataFrame({"filename": [], "fractured_boxes": []}).to_csv(boxes, index=False)
    assert main(run_heatmap(env, tmp_path) + ["--manifest", str(boxes)]) == 0
    assert "--manifest is deprecated" in capsys.readouterr().err
    assert json.loads((tmp_path / "hm" / "localization.json").read_text())["n_fractured"] == 0
