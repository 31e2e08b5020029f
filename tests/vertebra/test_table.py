"""vertebrae.csv validation: every problem named with its CSV line."""
import numpy as np
import pytest
from PIL import Image

from vfa.data.samples import DataError
from vfa.data.vertebrae import find_table, read_vertebrae
from vfa.stats.morphometry import POINT_COLUMNS

HEADER = "filename,level," + ",".join(POINT_COLUMNS) + ",grade,type\n"
GOOD = "a.png,T7," + ",".join(["10"] * 12) + ",0,normal\n"


@pytest.fixture
def folder(tmp_path):
    Image.fromarray(np.zeros((100, 60), np.uint8)).save(tmp_path / "a.png")
    return tmp_path


def write(folder, *rows, header=HEADER):
    (folder / "vertebrae.csv").write_text(header + "".join(rows))
    return folder / "vertebrae.csv"


def test_good_table_reads(folder):
    t = read_vertebrae(write(folder, GOOD, GOOD.replace("T7", "T8")))
    assert list(t["level"]) == ["T7", "T8"] and list(t["level_index"]) == [3, 4]
    assert t["sup_ant_x"].dtype == float and t["path"].iloc[0] == str(folder / "a.png")
    assert find_table(folder) == folder / "vertebrae.csv"
    assert find_table(folder / "manifest.csv") == folder / "vertebrae.csv"


@pytest.mark.parametrize("rows,message", [
    ((GOOD, GOOD.replace("T7", "C5")), "line 3: unknown level 'C5'"),
    ((GOOD, GOOD.replace("T7", "T8"), GOOD), "line 4: level T7 listed twice for one image (lines 2, 4)"),
    ((GOOD.replace(",10,", ",abc,", 1),), "line 2: sup_ant_x is not a number: 'abc'"),
    ((GOOD, GOOD.replace("T7", "T9").replace(",10,10,0", ",76,10,0")),
     "line 3: a point of T9 lies outside its 60x100 image"),
    ((GOOD.replace(",0,normal", ",4,normal"),), "line 2: grade must be 0, 1, 2 or 3"),
    ((GOOD.replace("normal", "burst"),), "line 2: unknown type 'burst'"),
])
def test_problems_name_the_line(folder, rows, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_vertebrae(write(folder, *rows))


def test_a_partial_views_body_may_cross_the_image_edge(folder):
    """A body cut by the edge (partial view): its corners up to a quarter of the image outside are kept."""
    t = read_vertebrae(write(folder, GOOD, GOOD.replace("T7", "T9").replace(",10,10,0", ",74,10,0")))
    assert list(t["level"]) == ["T7", "T9"] and (t[list(POINT_COLUMNS)].to_numpy() == 74).sum() == 1


def test_grades_only_table_is_accepted(folder):
    t = read_vertebrae(write(folder, "a.png,T7,2\n", "a.png,L1,0\n", header="filename,level,grade\n"))
    assert list(t["grade"]) == [2, 0]


def test_missing_columns(folder):
    with pytest.raises(DataError, match="needs 'filename' and 'level'"):
        read_vertebrae(write(folder, "a.png,2\n", header="filename,grade\n"))
    with pytest.raises(DataError, match="missing inf_post_y"):
        read_vertebrae(write(folder, "a.png,T7," + ",".join(["1"] * 11) + "\n",
                             header="filename,level," + ",".join(POINT_COLUMNS[:-1]) + "\n"))
    with pytest.raises(DataError, match="expected vertebrae.csv beside it"):
        find_table(folder / "no" / "table")
