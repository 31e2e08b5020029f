"""`--force` never destroys inputs or foreign files: each destructive case of the past, with what survives."""
import os
import shutil

import pytest

from tests.helpers import TINY, make_checkpoint, write_folder
from vfa.cli import main
from vfa.runs import MARKER


def tiny_train(tmp_path, out, *extra):
    data = tmp_path / "D"
    if not data.exists():
        write_folder(data / "train", n_per_class=3)
        write_folder(data / "val", n_per_class=3, seed=1)
    args = ["train", "--preset", "cpu-demo", "--train", str(data / "train"), "--val", str(data / "val"),
            "--out", str(out), "--epochs", "1", *extra]
    small = ["data.size=[48,32]", "data.batch_size=3", "model.backbone=vfa_cnn_small", "model.head=[]"]
    for item in TINY + small:  # the small CNN: checkpoints of kilobytes
        args += ["--set", item]
    return args


def test_evaluate_into_the_run_that_holds_the_model_is_refused(tmp_path, capsys):
    run = tmp_path / "RUN"
    ckpt = make_checkpoint((run / "checkpoints").mkdir(parents=True) or run / "checkpoints" / "best.ckpt")
    (run / "config.yaml").write_text("preset: cpu-demo\n")
    data = write_folder(tmp_path / "test", n_per_class=2)
    assert main(["evaluate", "--model", str(ckpt), "--data", str(data), "--out", str(run), "--force"]) == 2
    assert "contains the input" in capsys.readouterr().err
    assert ckpt.is_file() and (run / "config.yaml").is_file()


def test_train_into_its_own_dataset_or_the_working_folder_is_refused(tmp_path, capsys, monkeypatch):
    data = write_folder(tmp_path / "D" / "train", n_per_class=3).parent
    write_folder(data / "val", n_per_class=3, seed=1)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    assert main(tiny_train(tmp_path, data, "--force")) == 2
    assert "contains the input" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    assert main(tiny_train(tmp_path, ".", "--force")) == 2
    assert "current folder" in capsys.readouterr().err
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before and (tmp_path / "notes.txt").is_file()


def test_a_typo_in_the_data_leaves_the_previous_run_intact(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_train(tmp_path, run)) == 0
    kept = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    args = tiny_train(tmp_path, run, "--force")
    args[args.index("--train") + 1] += "-typo"
    assert main(args) == 2
    assert "not found" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == kept


def test_out_that_is_a_file_or_a_symlink_is_refused(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n")
    assert main(tiny_train(tmp_path, labels, "--force")) == 2
    assert "is a file" in capsys.readouterr().err and labels.read_text() == "path,label\n"
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert main(tiny_train(tmp_path, tmp_path / "link", "--force")) == 2
    assert "symbolic link" in capsys.readouterr().err


def test_force_replaces_only_vfa_outputs(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("weeks of work")
    assert main(tiny_train(tmp_path, foreign, "--force")) == 2
    assert "no vfa train outputs" in capsys.readouterr().err
    assert (foreign / "thesis.docx").read_text() == "weeks of work"
    run = tmp_path / "run"
    assert main(tiny_train(tmp_path, run)) == 0
    (run / "notes.txt").write_text("keep me")
    (run / "val").mkdir()  # an evaluation vfa wrote inside the run: its outputs go, its other files stay
    (run / "val" / MARKER).write_text('{"command": "evaluate"}')
    (run / "val" / "metrics.json").write_text("{}")
    (run / "val" / "my.png").write_text("x")
    old_history = (run / "history.csv").read_text()
    assert main(tiny_train(tmp_path, run, "--force")) == 0
    assert (run / "notes.txt").read_text() == "keep me" and (run / "val" / "my.png").is_file()
    assert not (run / "val" / "metrics.json").exists()
    assert (run / "history.csv").read_text().count("\n") == old_history.count("\n")  # one epoch, not two


def test_synth_force_on_a_real_dataset_is_refused(tmp_path, capsys):
    real = write_folder(tmp_path / "real" / "train", n_per_class=2).parent
    (real / "manifest.csv").write_text("path,label\n")
    assert main(["synth", "--out", str(real), "--n", "8", "--size", "96x64", "--force"]) == 2
    assert len(list(real.rglob("*.png"))) == 4 and (real / "manifest.csv").read_text() == "path,label\n"
    ph = tmp_path / "ph"
    assert main(["synth", "--out", str(ph), "--n", "8", "--size", "96x64"]) == 0
    (ph / "README.txt").write_text("about this phantom")
    assert main(["synth", "--out", str(ph), "--n", "8", "--size", "96x64", "--force", "--seed", "3"]) == 0
    assert (ph / "README.txt").is_file() and len(list(ph.rglob("phantom_*"))) == 8


@pytest.mark.parametrize("command", ["predict", "compare"])
def test_existing_single_outputs_need_force(tmp_path, capsys, command):
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    data = write_folder(tmp_path / "d", n_per_class=2)
    (data / "frac" / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(ckpt), str(data), "--out", str(out), "--device", "cpu"]) == 0
    skipped = tmp_path / "p_skipped.csv"
    assert skipped.is_file()
    if command == "predict":
        skipped.write_text("mine")
        out.unlink()
        assert main(["predict", "--model", str(ckpt), str(data), "--out", str(out), "--device", "cpu"]) == 2
        assert skipped.read_text() == "mine" and not out.exists()
    else:
        shutil.copy(out, tmp_path / "c.json")
        ev = tmp_path / "ev"
        assert main(["evaluate", "--model", str(ckpt), "--data", str(write_folder(tmp_path / "v", 2)), "--out",
                     str(ev), "--device", "cpu", "--gallery", "0"]) == 0
        pred = str(ev / "predictions.csv")
        assert main(["compare", pred, pred, "--out", str(tmp_path / "c.json")]) == 2
        assert main(["compare", pred, pred, "--out", str(tmp_path / "c.json"), "--force"]) == 0
    assert "--force" in capsys.readouterr().err
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_force_clears_the_old_runs_fallback_checkpoint(tmp_path):
    from vfa.runs import prepare_run_dir
    from vfa.training.checkpointing import resume_point

    run = tmp_path / "run"
    prepare_run_dir(run, force=False)
    (run / "checkpoints").mkdir()
    for name in ("last.ckpt", "last.ckpt.prev", "hpc_ckpt_1.ckpt", ".last.ckpt.x1.tmp"):
        (run / "checkpoints" / name).write_text("old run")
    prepare_run_dir(run, force=True)
    assert not any((run / "checkpoints").iterdir())
    (run / "checkpoints" / "last.ckpt.prev").write_text("another run's")
    with pytest.raises(FileNotFoundError):  # last.ckpt.prev alone is never resumed from
        resume_point(run)


def test_a_foreign_folder_with_common_file_names_is_not_vfas(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("metrics.json", "predictions.csv", "report.html", "roc.png"):
        (other / name).write_text("{}" if name.endswith("json") else "x")
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    data = write_folder(tmp_path / "d", n_per_class=2)
    assert main(["evaluate", "--model", str(ckpt), "--data", str(data), "--out", str(other), "--force"]) == 2
    assert "no vfa evaluate outputs" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["metrics.json", "predictions.csv", "report.html", "roc.png"]


def test_force_leaves_nested_runs_and_empty_user_folders(tmp_path):
    ph = tmp_path / "ph"
    assert main(["synth", "--out", str(ph), "--n", "8", "--size", "96x64"]) == 0
    (ph / "myrun" / "checkpoints").mkdir(parents=True)
    (ph / "myrun" / ".vfa-output.json").write_text('{"command": "train"}')
    (ph / "myrun" / "checkpoints" / "best.ckpt").write_text("weeks")
    (ph / "empty-by-choice").mkdir()
    assert main(["synth", "--out", str(ph), "--n", "8", "--size", "96x64", "--force"]) == 0
    assert (ph / "myrun" / "checkpoints" / "best.ckpt").read_text() == "weeks" and (ph / "empty-by-choice").is_dir()


def test_rank_variables_outside_ddp_do_not_switch_off_the_guards(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NODE_RANK", "1")  # e.g. set by a cluster for an unrelated task
    out = tmp_path / "ev"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    data = write_folder(tmp_path / "d", n_per_class=2)
    assert main(["evaluate", "--model", str(ckpt), "--data", str(data), "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_predict_force_replaces_only_vfa_predictions(tmp_path, capsys):
    """A predictions table is vfa's when its job record is beside it or its header is vfa's; --resume
    is suggested only where it can work (the record is there)."""
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    data = write_folder(tmp_path / "d", n_per_class=1)
    out = tmp_path / "notes.csv"
    predict = ["predict", "--model", str(ckpt), str(data), "--out", str(out), "--device", "cpu", "--workers", "0"]
    out.write_text("name,notes\nalice,x\n")
    for extra in ([], ["--force"], ["--resume"]):
        assert main([*predict, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is not a vfa predictions file" in err and "choose another --out" in err
        assert "add --resume" not in err
    assert out.read_text() == "name,notes\nalice,x\n"
    out.unlink()
    assert main(predict) == 0
    assert main(predict) == 2
    assert "add --resume to predict only the files not in it yet, or --force" in capsys.readouterr().err
    (tmp_path / ".notes.csv.vfa-job.json").unlink()  # the header alone still says it is vfa's
    assert main(predict) == 2
    err = capsys.readouterr().err
    assert "exists; pass --force to replace it" in err and "--resume" not in err
    assert main([*predict, "--force"]) == 0 and len(out.read_text().splitlines()) == 3
    skipped = tmp_path / "notes_skipped.csv"
    skipped.write_text("mine")
    assert main([*predict, "--force"]) == 2
    assert "notes_skipped.csv exists and is not vfa's list of skipped files" in capsys.readouterr().err
    assert skipped.read_text() == "mine"
