"""`--out` is checked against what an input glob expands to (issue 31, item 8): `vfa predict
'DATA/*.csv' --out DATA/x.csv --force`, with x.csv among the manifests, must not replace one."""
import pandas as pd
import pytest

from tests.helpers import make_checkpoint, write_folder
from vfa.cli import main
from vfa.errors import ConfigError
from vfa.runs import check_out


@pytest.fixture
def manifests(tmp_path):
    data = write_folder(tmp_path / "imgs", n_per_class=1)
    man = tmp_path / "DATA"
    man.mkdir()
    for name in ("a.csv", "x.csv"):
        pd.DataFrame({"path": sorted(str(p) for p in data.rglob("*.png"))}).to_csv(man / name, index=False)
    return man


def test_predict_force_onto_a_manifest_the_glob_matches_is_refused(tmp_path, manifests, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    before = (manifests / "x.csv").read_text()
    for glob, out in (("DATA/*.csv", "DATA/x.csv"), (str(manifests / "[ax].csv"), str(manifests / "x.csv"))):
        assert main(["predict", "--model", str(ckpt), glob, "--out", out, "--force", "--device", "cpu",
                     "--workers", "0"]) == 2
        assert f"matches the input {glob}" in capsys.readouterr().err
    assert (manifests / "x.csv").read_text() == before


def test_check_out_expands_globs(tmp_path, manifests, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for glob, out in (("DATA/*.csv", "DATA/new.csv"),  # not written yet: a rerun would read it back
                      ("DATA/**/*.csv", "DATA/sub/x.csv"), ("D*/?.csv", str(manifests / "x.csv"))):
        with pytest.raises(ConfigError, match="matches the input"):
            check_out(out, [glob], "file")
    with pytest.raises(ConfigError, match=r"contains DATA/[ax]\.csv, an input"):
        check_out(manifests, ["DATA/*.csv"], "folder")
    for glob, out in (("DATA/*.csv", "DATA/x.parquet"), ("DATA/*.csv", "out.csv"), ("DATA/?.csv", "DATA/xy.csv")):
        assert check_out(out, [glob], "file").name == out.rsplit("/", 1)[-1]  # beside the inputs, not one of them
    assert check_out(tmp_path / "runs" / "r1", ["DATA/*.csv"], "folder")
