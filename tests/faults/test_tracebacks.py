"""The last tracebacks and silent successes: each is now one line naming the file and the reason."""

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import make_checkpoint, write_folder
from vfa import checkpoint
from vfa import config as config_mod
from vfa.cli import main


class Evil:  # a pickled object whose loading would run code
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    truncated = root / "truncated.ckpt"
    truncated.write_bytes(make_checkpoint(root / "good.ckpt").read_bytes()[:2000])
    unsafe = root / "unsafe.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"config": {}}, "x": Evil()}, unsafe)
    bad_cfg = root / "badcfg.ckpt"
    ckpt = checkpoint.load(root / "good.ckpt")
    ckpt["hyper_parameters"]["config"]["data"]["batch_size"] = -3
    torch.save(ckpt, bad_cfg)
    return {"root": root, "data": write_folder(root / "data", n_per_class=2), "truncated": truncated,
            "unsafe": unsafe, "bad_cfg": bad_cfg}


def model_commands(env, model, tmp):
    d = str(env["data"])
    return {
        "predict": ["predict", "--model", model, d, "--out", str(tmp / "p.csv")],
        "evaluate": ["evaluate", "--model", model, "--data", d, "--out", str(tmp / "ev")],
        "heatmap": ["heatmap", "--model", model, "--data", d, "--out", str(tmp / "hm")],
        "export": ["export", "--model", model, "--out", str(tmp / "m.onnx")],
        "calibrate": ["calibrate", "--model", model, "--data", d, "--out", str(tmp / "c.ckpt")],
        "lr-find": ["lr-find", "--model", model, "--train", d, "--out", str(tmp / "lr")],
        "train --init": ["train", "--init", model, "--train", d, "--val", d, "--out", str(tmp / "r")],
    }


@pytest.mark.parametrize("kind,expect", [("truncated", "damaged, truncated"), ("unsafe", "never runs code"),
                                         ("bad_cfg", "stored config is not valid")])
def test_bad_checkpoints_are_one_line_everywhere(env, tmp_path, capsys, kind, expect):
    for name, args in model_commands(env, str(env[kind]), tmp_path).items():
        assert main(args) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expect in err and str(env[kind]) in err, (name, err)
        assert "weights_only=False" not in err and "code ran" not in err
    assert not list(tmp_path.iterdir())  # nothing was written


def test_resume_from_a_damaged_checkpoint_is_one_line(env, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(config_mod.dump(config_mod.resolve("cpu-demo")))
    (run / "checkpoints" / "last.ckpt").write_bytes(env["truncated"].read_bytes())
    assert main(["train", "--resume", str(run), "--epochs", "50"]) == 2
    err = capsys.readouterr().err
    assert "last.ckpt: not a loadable vfa checkpoint" in err and err.count("\n") == 1


@pytest.mark.parametrize("args,expect", [
    (["synth", "--size", "0x0"], "size must be"), (["synth", "--n", "0"], "n must be"),
    (["synth", "--prevalence", "2"], "prevalence"), (["synth", "--splits", "0.5,0.5,0.5"], "splits"),
    (["train", "--set", "trainer.devices=abc"], "trainer.devices"),
    (["train", "--set", "model.backbone=nope"], "unknown timm backbone"),
    (["train", "--set", "trainer.accelerator=quantum"], "trainer.accelerator"),
    (["summary", "--set", "model.backbone=nope"], "unknown timm backbone"),
])
def test_bad_values_are_one_line(env, tmp_path, capsys, args, expect):
    if args[0] == "synth":
        args = args + ["--out", str(tmp_path / "ph")]
    elif args[0] == "train":
        d = str(env["data"])
        args = args + ["--train", d, "--val", str(write_folder(tmp_path / "v", 2, seed=1)), "--out",
                       str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("extra,expect", [(["--batch-size", "0"], "--batch-size must be"),
                                          (["--tta", "-3"], "--tta must be")])
def test_bad_predict_options_are_refused_before_work(env, tmp_path, capsys, extra, expect):
    model = make_checkpoint(tmp_path / "m.ckpt")
    assert main(["predict", "--model", str(model), str(env["data"]), "--out", str(tmp_path / "p.csv"), *extra]) == 2
    assert expect in capsys.readouterr().err and not (tmp_path / "p.csv").exists()


def test_predict_on_nothing_fails(env, tmp_path, capsys):
    model = make_checkpoint(tmp_path / "m.ckpt")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", "--model", str(model), str(empty), "--out", str(tmp_path / "p.csv")]) == 2
    assert "no images to predict" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()
    (empty / "x.png").write_bytes(b"not a png")
    assert main(["predict", "--model", str(model), str(empty), "--out", str(tmp_path / "p.csv")]) == 2
    assert "all 1 unusable" in capsys.readouterr().err


def test_images_too_small_for_a_spine_are_refused(tmp_path, capsys):
    model = make_checkpoint(tmp_path / "m.ckpt")
    for name, shape in (("dot.png", (1, 1)), ("line.png", (1, 5000)), ("ok.png", (64, 40))):
        Image.fromarray(np.full(shape, 128, np.uint8)).save(tmp_path / name)
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(model), str(tmp_path / "dot.png"), str(tmp_path / "line.png"),
                 str(tmp_path / "ok.png"), "--out", str(out)]) == 0
    assert "image too small (1x1 px" in capsys.readouterr().err
    assert [line.split(",")[0] for line in out.read_text().splitlines()[1:]] == [str(tmp_path / "ok.png")]
    assert "1x5000" in (tmp_path / "p_skipped.csv").read_text()


def test_a_deflated_dicom_bomb_is_refused_before_inflating(tmp_path, monkeypatch):
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from vfa.io import BadImageError, read_image, write_dicom

    path = write_dicom(tmp_path / "bomb.dcm", np.zeros((64, 64), np.uint8)) or tmp_path / "bomb.dcm"
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 30000  # what it declares; its deflated pixel data would inflate to 900 MB
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)

    def never(*args, **kwargs):
        raise AssertionError("pydicom inflated the file before its size was checked")

    monkeypatch.setattr(pydicom, "dcmread", never)
    with pytest.raises(BadImageError, match="30000x30000 pixels x 1 frame.*refused before inflating"):
        read_image(path)


def test_an_onnx_export_given_as_model_names_what_to_pass(env, tmp_path, capsys):
    onnx = tmp_path / "in" / "model.onnx"  # the suffix decides: vfa never reads an .onnx as a checkpoint
    onnx.parent.mkdir()
    onnx.write_bytes(b"\x08\x08\x12\x07pytorch")
    out = tmp_path / "out"
    out.mkdir()
    for name, args in model_commands(env, str(onnx), out).items():
        assert main(args) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is an ONNX export" in err and "damaged" not in err, (name, err)
        assert ".ckpt it was exported from" in err and "--backend onnxruntime" in err, (name, err)
    assert not list(out.iterdir())


def test_a_run_folder_as_model_is_its_best_checkpoint(env, tmp_path, capsys):
    run = tmp_path / "runs" / "small"
    make_checkpoint(run / "checkpoints" / "best.ckpt")
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(run), str(env["data"]), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    # said once, though the folder is resolved where --model is listed and again where it is loaded
    assert err.count(f"model {run} is a run folder: using its checkpoints/best.ckpt") == 1, err
    assert len(out.read_text().splitlines()) == 5


def test_a_folder_without_a_best_checkpoint_names_what_it_holds(env, tmp_path, capsys):
    run = tmp_path / "run"
    make_checkpoint(run / "checkpoints" / "last.ckpt")
    for name, args in model_commands(env, str(run), tmp_path / "out").items():
        assert main(args) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is a folder without checkpoints/best.ckpt" in err, (name, err)
        assert "it holds checkpoints/last.ckpt: pass one of them" in err, (name, err)
    (run / "checkpoints" / "last.ckpt").unlink()
    assert main(["predict", "--model", str(run), str(env["data"]), "--out", str(tmp_path / "p.csv")]) == 2
    assert "pass a .ckpt file, or the folder of a vfa train run" in capsys.readouterr().err
