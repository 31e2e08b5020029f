import json
import shutil

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from tests.helpers import write_folder
from vfa.data.check import check_data, format_report
from vfa.cli import main as cli_main
from vfa.io import write_dicom


def split_folders(root):
    write_folder(root / "train", n_per_class=4, seed=0)
    write_folder(root / "val", n_per_class=2, seed=1)
    return root


def test_clean_dataset_is_ready(tmp_path, capsys):
    root = split_folders(tmp_path / "d")
    write_dicom(root / "train" / "frac" / "IM0001", np.full((48, 32), 200, np.uint8), patient_id="PHANTOM-9")
    rep = check_data(root, workers=1)
    assert rep["ready"] and rep["verdict"] == "READY" and rep["layout"] == "split folders"
    assert rep["splits"] == [{"split": "train", "norm": 4, "frac": 5, "usable": 9, "unusable": 0},
                             {"split": "val", "norm": 2, "frac": 2, "usable": 4, "unusable": 0}]
    stats = dict((k, dict(v)) for k, v in rep["stats"].items())
    assert stats["format"] == {"PNG": 12, "DICOM": 1} and stats["image size (HxW)"] == {"48x32": 13}
    assert stats["transfer syntax"] == {"Explicit VR Little Endian": 1} and stats["photometric"] == {"MONOCHROME2": 1}
    assert rep["patients"]["DICOM PatientID"] == 1
    assert "PHANTOM-9" not in json.dumps(rep)  # no identifiers without --keep-identifiers
    text = format_report(rep)
    assert "verdict: READY" in text and "train" in text and "Explicit VR Little Endian: 1" in text
    assert cli_main(["check-data", str(root)]) == 0
    seen = capsys.readouterr()
    assert "verdict: READY" in seen.out and "check files: 100%" in seen.err  # a bar: 100,000 files take minutes
    assert cli_main(["check-data", str(root), "--json", "--keep-identifiers"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [v["PatientID"] for v in out["identifiers"].values()] == ["PHANTOM-9"]


def test_every_problem_is_named(tmp_path, capsys):
    root = split_folders(tmp_path / "d")
    (root / "train" / "norm" / "notes.txt").write_text("hello")
    (root / "train" / "frac" / "broken.png").write_bytes(b"\x89PNG garbage")
    (root / "train" / "frac" / "empty.png").write_bytes(b"")
    shutil.copy(get_testdata_file("SC_rgb_rle_2frame.dcm"), root / "train" / "frac" / "cine.dcm")
    shutil.copy(get_testdata_file("rtplan.dcm"), root / "val" / "norm" / "plan.dcm")
    shutil.copy(root / "train" / "norm" / "norm_000.png", root / "val" / "norm" / "copy.png")  # leakage
    shutil.copy(root / "val" / "frac" / "frac_000.png", root / "val" / "frac" / "again.png")  # duplicate
    rep = check_data(root, workers=2)
    assert not rep["ready"] and rep["verdict"].startswith("NOT READY: 2 problem(s)")
    reasons = {u["file"].split("/")[-1]: u["reason"] for u in rep["unusable"]}
    assert reasons["notes.txt"].startswith("not an image file")
    assert reasons["broken.png"].startswith("cannot decode image")
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert reasons["cine.dcm"].startswith("multi-frame DICOM (2 frames)")
    assert "without pixel data" in reasons["plan.dcm"]
    assert any("norm_000.png" in m and "copy.png" in m for m in rep["leakage"])
    assert len(rep["duplicates"]) == 2
    text = format_report(rep)
    assert "unusable files (5)" in text and "problem: 5 unusable file(s)" in text and "in two splits" in text
    assert cli_main(["check-data", str(root)]) == 1
    rep_frame = check_data(root, frame=0, workers=1)  # --frame 0 makes the cine usable
    assert not any(u["file"].endswith("cine.dcm") for u in rep_frame["unusable"])


def test_manifest_with_splits_and_single_class_val(tmp_path):
    root = write_folder(tmp_path / "d")
    rows = ["path,label,patient_id,split"]
    rows += [f"norm/norm_{i:03d}.png,norm,N{i},{'val' if i == 0 else 'train'}" for i in range(4)]
    rows += [f"frac/frac_{i:03d}.png,frac,F{i},train" for i in range(4)]
    rows += ["frac/nothere.png,frac,F9,train", "norm/norm_003.png,,N3,train"]
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    rep = check_data(root / "m.csv", workers=1)
    assert rep["layout"] == "manifest with splits" and [r["split"] for r in rep["splits"]] == ["train", "val"]
    assert rep["patients"]["manifest patient_id"] == 8
    assert any("val: no usable 'frac' images (a validation set with a single class" in e for e in rep["errors"])
    reasons = [u["reason"] for u in rep["unusable"]]
    assert "file not found" in reasons and any(r.startswith("missing label") for r in reasons)


def test_missing_path_is_a_one_line_error(tmp_path, capsys):
    assert cli_main(["check-data", str(tmp_path / "nope.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"vfa check-data: error: manifest not found: {tmp_path / 'nope.csv'}"
    (tmp_path / "empty").mkdir()
    assert cli_main(["check-data", str(tmp_path / "empty")]) == 2
    assert "missing class folder" in capsys.readouterr().err


def test_a_folders_patients_come_from_the_manifest_beside_it(tmp_path):
    """A `vfa synth`-style root: split folders and a manifest.csv with patient_id next to them."""
    root = split_folders(tmp_path / "d")
    rows = ["filename,label,patient_id"]  # patient P0 has an image in train and one in val: leakage
    rows += [f"train/{c}/{c}_{i:03d}.png,{c},P{i}" for c in ("norm", "frac") for i in range(4)]
    rows += [f"val/{c}/{c}_{i:03d}.png,{c},{'P0' if (c, i) == ('norm', 0) else f'V{c}{i}'}"
             for c in ("norm", "frac") for i in range(2)]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    rep = check_data(root, workers=1)
    assert rep["patients"]["manifest patient_id"] == 7 and rep["patients_from"] == str(root / "manifest.csv")
    assert any("the same patient (patient_id) in train and val" in m for m in rep["leakage"]) and not rep["ready"]
    assert f"7 distinct (patient_id of {root / 'manifest.csv'})" in format_report(rep)
    rep = check_data(root / "val", workers=1)  # DATA/val finds DATA/manifest.csv, as evaluate does
    assert rep["patients"]["manifest patient_id"] == 4
    (root / "manifest.csv").write_text("notes\nnot a manifest\n")  # another kind of manifest.csv: ignored
    assert check_data(root, workers=1)["patients"]["manifest patient_id"] == 0


def test_a_root_of_split_folders_given_as_a_class_folder_names_them(tmp_path, capsys):
    root = split_folders(tmp_path / "d")
    (root / "manifest.csv").write_text("path,label,split\ntrain/norm/norm_000.png,0,train\n"
                                       "val/norm/norm_000.png,0,val\n")
    from vfa.data.samples import DataError, load_samples

    with pytest.raises(DataError) as info:
        load_samples(root)
    err = str(info.value)
    assert "missing class folder(s) norm, frac (expected norm/frac); it holds train/, val/, with norm/frac: " \
           f"pass one of them ({root / 'train'}, {root / 'val'}), or {root / 'manifest.csv'}:SPLIT (train, val)" in err
    words = tmp_path / "words"
    for name in ("normal", "fracture"):
        (words / name).mkdir(parents=True)
    assert cli_main(["check-data", str(words)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "it holds fracture/, normal/: rename them, or list the images in a manifest" in err


def test_color_images_are_reported(tmp_path):
    from PIL import Image

    root = write_folder(tmp_path / "d")
    Image.fromarray(np.full((48, 32, 4), 120, np.uint8)).save(root / "frac" / "rgba.png")
    rep = check_data(root, workers=1)
    assert rep["ready"] and dict(map(tuple, rep["stats"]["color mode"])) == {"L": 8, "RGBA": 1}
    assert any("1 color image(s)" in w and "alpha dropped" in w for w in rep["warnings"])


def test_the_up_front_decode_of_a_training_set_shows_progress(tmp_path, capsys):
    from vfa.data.samples import load_samples, validate

    root = split_folders(tmp_path / "d")
    validate(load_samples(root / "train", ("norm", "frac")), workers=1)
    assert "decode images: 100%" in capsys.readouterr().err
    validate(load_samples(root / "train", ("norm", "frac")), workers=1, progress=False)
    assert "decode images" not in capsys.readouterr().err
