import numpy as np
import pytest
import torch

from vfa.data import DataError, ImageDataset, class_weight, scan_folder, validate


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
    ds = ImageDataset(scan_folder(folder), size=(60, 36))
    x, y, i = ds[5]
    assert x.shape == (3, 60, 36) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and torch.equal(x[0], x[2])
    assert y.item() == 1 and i == 5


def test_augmented_dataset_differs_but_keeps_shape(folder):
    torch.manual_seed(0)
    ds = ImageDataset(scan_folder(folder), size=(60, 36), augment="seed")
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
