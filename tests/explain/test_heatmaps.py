"""`vfa heatmap` bugs that stay fixed: one heatmaps.csv row per image on resume, DICOM inputs as PNG."""
import csv

import numpy as np
import pytest
from PIL import Image

from tests.helpers import make_checkpoint
from vfa.explain.heatmaps import overlay_name, write_heatmaps
from vfa.io import write_dicom


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("hm") / "m.ckpt")


def rows(out):
    with open(out / "heatmaps.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_redrawing_and_resuming_keep_one_row_per_image(ckpt, folder, tmp_path):
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    out = tmp_path / "hm"
    kw = dict(root=folder, progress=False, log=lambda m: None)
    write_heatmaps(ckpt, paths, out, **kw)
    write_heatmaps(ckpt, paths, out, force=True, **kw)  # everything redrawn
    with open(out / "heatmaps.csv", "a", newline="") as f:  # an interrupted run left a second row
        f.write(open(out / "heatmaps.csv").read().splitlines()[1] + "\n")
    (out / rows(out)[1]["heatmap"]).unlink()  # and one overlay is missing
    res = write_heatmaps(ckpt, paths, out, **kw)
    assert res["written"] == 1
    files = [r["file"] for r in rows(out)]
    assert sorted(files) == sorted(set(files)) and len(files) == len(paths)
    assert len(list(out.rglob("heatmap_*"))) == len(paths)


def test_dicom_inputs_get_png_overlays(ckpt, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        write_dicom(tmp_path / "in" / f"scan{i}.dcm", (rng.random((60, 40)) * 255).astype(np.uint8))
    paths = sorted(str(p) for p in (tmp_path / "in").glob("*.dcm"))
    write_heatmaps(ckpt, paths, tmp_path / "hm", root=tmp_path / "in", progress=False, log=lambda m: None)
    made = sorted((tmp_path / "hm").glob("heatmap_*"))
    assert [p.name.endswith(".dcm.png") for p in made] == [True, True]
    for p in made:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size == (40, 60)
    assert overlay_name("a.png") == "a.png" and overlay_name("b.jpg") == "b.jpg" and overlay_name("c") == "c.png"


def test_a_foreign_folder_is_refused_and_only_own_overlays_are_removed(ckpt, folder, tmp_path):
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    kw = dict(root=folder, progress=False, log=lambda m: None)
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.docx").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no vfa heatmaps"):
        write_heatmaps(ckpt, paths, other, **kw)
    out = tmp_path / "hm"
    write_heatmaps(ckpt, paths, out, **kw)
    (tmp_path / "precious.txt").write_text("keep")
    rows = (out / "heatmaps.csv").read_text().splitlines()
    rows[1] = rows[1].replace(rows[1].split(",")[2], "../precious.txt")  # a CSV pointing outside
    (out / "heatmaps.csv").write_text("\n".join(rows) + "\n")
    write_heatmaps(ckpt, paths, out, force=True, **kw)
    assert (tmp_path / "precious.txt").read_text() == "keep" and (other / "thesis.docx").is_file()
