import numpy as np
import pytest
import torch

from vfa.data.samples import DataError, scan_folder, validate
from vfa.config import get_augment_config
from vfa.data.dataset import ImageDataset, class_weight
from vfa.data.transforms import DataSpec, Transform


def test_labels_from_folders(folder):
    s = scan_folder(folder)
    assert len(s.paths) == 8
    for path, label in zip(s.paths, s.labels):
        assert ("/frac/" in path) == (label == 1)
    assert s.counts() == {0: 4, 1: 4}


def test_custom_class_order(folder):
    s = scan_folder(folder, classes=("frac", "norm"))
    assert all(("/frac/" in p) == (lab == 0) for p, lab in zip(s.paths, s.labels))


def test_dataset_items_are_3ch_resized_unit_range(folder):
    ds = ImageDataset(scan_folder(folder), Transform(DataSpec((60, 36))))
    x, y, i = ds[5]
    assert x.shape == (3, 60, 36) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and torch.equal(x[0], x[2])
    assert y.item() == 1 and i == 5


def test_augmented_dataset_differs_but_keeps_shape(folder):
    torch.manual_seed(0)
    ds = ImageDataset(scan_folder(folder), Transform(DataSpec((60, 36)), get_augment_config("seed")))
    a, _, _ = ds[0]
    b, _, _ = ds[0]
    assert a.shape == (3, 60, 36) and not torch.equal(a, b)


def test_bad_files_error_or_skip(folder):
    (folder / "frac" / "notes.txt").write_text("hello")
    (folder / "norm" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError) as info:
        validate(scan_folder(folder), "error")
    msg = str(info.value)
    assert "notes.txt" in msg and "broken.png" in msg and "--on-bad-file skip" in msg
    kept = validate(scan_folder(folder), "skip")
    assert len(kept.paths) == 8 and len(kept.skipped) == 2


def test_missing_folder_and_class(tmp_path, folder):
    with pytest.raises(DataError, match="not found"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "only" / "norm").mkdir(parents=True)
    with pytest.raises(DataError, match="missing class folder"):
        scan_folder(tmp_path / "only")
    (tmp_path / "only" / "frac").mkdir()
    with pytest.raises(DataError, match="only.norm: no usable images"):
        validate(scan_folder(tmp_path / "only"), need_classes=(0, 1))


def test_class_weight_is_n_norm_over_n_frac():
    assert class_weight([0, 0, 0, 0, 1]) == 4.0
    assert class_weight(np.array([0, 1, 1]).tolist()) == 0.5
    with pytest.raises(DataError):
        class_weight([0, 0])


# ---- manifests, DICOM in class folders, leakage (issue 5) ----

from vfa.data.samples import check_leakage, load_samples, read_manifest  # noqa: E402


def write_manifest(path, rows, header="path,label,patient_id,split"):
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def test_manifest_labels_by_name_or_index_and_relative_paths(folder):
    m = write_manifest(folder / "m.csv", [("norm/norm_000.png", "norm", "A", "train"),
                                          ("frac/frac_000.png", 1, "B", "train"),
                                          (str(folder / "frac" / "frac_001.png"), "frac", "C", "val")])
    s = load_samples(f"{m}:train")
    assert s.labels == [0, 1] and s.paths[0] == str(folder / "norm" / "norm_000.png")
    assert s.columns["patient_id"] == ["A", "B"] and s.source.endswith("m.csv:train")
    assert load_samples(m, split="val").paths == [str(folder / "frac" / "frac_001.png")]
    with pytest.raises(DataError, match="holds several splits \\(train, val\\).*m.csv:SPLIT"):
        load_samples(m)  # evaluate without a split: refuse to mix
    assert len(load_samples(m, split="all").paths) == 3
    with pytest.raises(DataError, match="no rows with split 'test' \\(splits present: train, val\\)"):
        load_samples(m, split="test")


def test_manifest_without_split_column_is_one_set(folder):
    m = write_manifest(folder / "m.csv", [("norm/norm_000.png", 0), ("frac/frac_000.png", 1)], "path,label")
    assert load_samples(m, split="train").labels == [0, 1]
    assert load_samples(m, split="val").labels == [0, 1]


def test_manifest_row_problems_are_reported_with_lines(folder):
    m = write_manifest(folder / "m.csv", [("norm/norm_000.png", ""), ("norm/norm_001.png", "maybe"),
                                          ("norm/norm_002.png", 0), ("norm/norm_002.png", 0),
                                          ("frac/missing.png", 1), ("frac/frac_000.png", 1)], "path,label")
    s = read_manifest(m, split="all")
    reasons = dict(s.skipped)
    assert "missing label (m.csv line 2)" in reasons[str(folder / "norm" / "norm_000.png")]
    assert "unknown label 'maybe'" in reasons[str(folder / "norm" / "norm_001.png")]
    assert "listed twice in m.csv (lines 4 and 5)" in reasons[str(folder / "norm" / "norm_002.png")]
    with pytest.raises(DataError) as info:
        validate(s, "error")
    assert "missing.png: file not found" in str(info.value) and "4 unusable" in str(info.value)
    kept = validate(s, "skip")
    assert kept.labels == [0, 1] and len(kept.skipped) == 4


def test_a_label_vocabulary_vfa_does_not_read_is_named_not_skipped(folder, capsys):
    """normal/fracture would make every row 'unusable', and --on-bad-file skip would drop them all."""
    from vfa.cli import main

    rows = [(f"norm/norm_00{i}.png", "normal") for i in range(3)] + [("frac/frac_000.png", "fracture")]
    m = write_manifest(folder / "words.csv", rows, "path,label")
    for on_bad_file in ("error", "skip"):
        with pytest.raises(DataError, match=r"label values 'normal' \(3 rows\), 'fracture' \(1 row\) are not "
                                            r"vfa's: expected norm or frac \(or 0 = norm, 1 = frac\)"):
            validate(load_samples(m), on_bad_file)
    assert main(["check-data", str(m)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'normal' (3 rows)" in err and "unusable" not in err
    # one class written another way leaves the other without rows: the same line
    half = write_manifest(folder / "half.csv", [("norm/norm_000.png", "normal"), ("frac/frac_000.png", 1)],
                          "path,label")
    with pytest.raises(DataError, match="label values 'normal' \\(1 row\\)"):
        load_samples(half)


def test_a_manifest_without_a_path_column_names_the_three_it_takes(tmp_path, capsys):
    from vfa.cli import main

    m = tmp_path / "m.csv"
    m.write_text("image,label\nx.png,0\n")
    assert main(["check-data", str(m)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no 'path' column, nor 'filename' or 'file' (columns: image, label)" in err
    for name in ("filename", "file"):
        m.write_text(f"{name},label\nx.png,0\n")
        assert load_samples(m).paths == [str(tmp_path / "x.png")]


@pytest.mark.parametrize("content, reason", [
    (None, "manifest not found"), ("", "not a readable CSV"), ("file_name,label\nx.png,0\n", "no 'path' column"),
    ("path,diagnosis\nx.png,0\n", "no 'label' column"), ("path,label\n", "has no rows")])
def test_bad_manifests(tmp_path, content, reason):
    m = tmp_path / "m.csv"
    if content is not None:
        m.write_text(content)
    with pytest.raises(DataError, match=reason):
        load_samples(m)


def test_missing_data_argument_and_wrong_file(tmp_path):
    with pytest.raises(DataError, match="data folder not found: .* or a manifest .csv"):
        load_samples(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="neither a folder .* nor a manifest"):
        load_samples(tmp_path / "x.txt")


def test_phantom_manifest_is_a_manifest(tiny_phantom):
    """vfa synth's manifest.csv (filename, split, label, patient_id, ...) works as it is."""
    s = load_samples(tiny_phantom / "manifest.csv", split="val")
    assert s.paths and all("/val/" in p for p in s.paths)
    assert set(s.labels) == {0, 1} and len(s.columns["patient_id"]) == len(s.paths)


def test_dicom_and_extensionless_files_in_class_folders(folder):
    from vfa.io import write_dicom

    write_dicom(folder / "norm" / "scan.dcm", np.full((48, 32), 9, np.uint8))
    write_dicom(folder / "frac" / "IM0001", np.full((48, 32), 200, np.uint8))  # no extension: DICM magic
    (folder / "frac" / "README").write_text("not an image")
    s = scan_folder(folder)
    assert str(folder / "frac" / "IM0001") in s.paths and str(folder / "norm" / "scan.dcm") in s.paths
    assert s.skipped == [(str(folder / "frac" / "README"), "not an image file (no extension and no DICOM header)")]
    kept = validate(s, "skip")
    assert len(kept.paths) == 10 and len(kept.hashes) == 10


def test_leakage_by_content_and_patient(folder, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(folder, other)
    a, b = validate(scan_folder(folder)), validate(scan_folder(other))
    problems = check_leakage({"train": a, "val": b})
    assert len(problems) == 8 and "the same image content in train and val" in problems[0]
    m = write_manifest(tmp_path / "m.csv", [(f"{folder}/norm/norm_000.png", 0, "P1", "train"),
                                            (f"{folder}/frac/frac_000.png", 1, "P1", "val")])
    tr, va = validate(load_samples(m, split="train")), validate(load_samples(m, split="val"))
    problems = check_leakage({"train": tr, "val": va})
    assert problems == [f"the same patient (patient_id) in train and val: {folder}/norm/norm_000.png and "
                        f"{folder}/frac/frac_000.png"]
    assert "P1" not in problems[0].replace(str(folder), "")  # the patient ID itself is never printed


def test_load_data_refuses_leakage_and_single_class_val(folder, tmp_path):
    from vfa import config as config_mod
    from vfa.training.train import load_data

    cfg = config_mod.resolve("cpu-demo", overrides={"data": {"train": str(folder), "val": str(folder)}})
    with pytest.raises(DataError, match="data leakage between splits \\(8 case"):
        load_data(cfg, log=lambda m: None)
    single = tmp_path / "single"
    (single / "frac").mkdir(parents=True)
    import shutil

    shutil.copytree(folder / "norm", single / "norm")
    for p in (single / "norm").iterdir():  # different content from the training images
        from PIL import Image

        Image.fromarray(255 - np.asarray(Image.open(p))).save(p)
    cfg = config_mod.resolve("cpu-demo", overrides={"data": {"train": str(folder), "val": str(single)}})
    with pytest.raises(DataError, match="validation set .* has a single class \\(4 norm\\)"):
        load_data(cfg, log=lambda m: None)


def test_load_data_takes_val_from_a_split_manifest(folder):
    from vfa import config as config_mod
    from vfa.training.train import load_data

    rows = [(f"{c}/{c}_{i:03d}.png", c, f"{c}{i}", "train" if i < 3 else "val")
            for c in ("norm", "frac") for i in range(4)]
    m = write_manifest(folder / "m.csv", rows)
    cfg = config_mod.resolve("cpu-demo", overrides={"data": {"train": str(m)}})
    tr, va = load_data(cfg, log=lambda m: None)
    assert len(tr.paths) == 6 and len(va.paths) == 2 and va.source.endswith("m.csv:val")
