"""Augmentation preview: one row per image, the image plus N augmented versions, each labelled."""
import pytest
from PIL import Image

from tests.helpers import write_folder
from vfa.data.augment import Augment
from vfa.cli import main
from vfa.config import ConfigError
from vfa.data.preview import label, make_figure, pick, resolve


def test_grid_has_one_panel_per_image_and_version(tmp_path):
    import matplotlib.pyplot as plt

    data = write_folder(tmp_path / "d", n_per_class=3, size=(60, 36))
    paths = pick(data, 2)
    assert all("/frac/" in p for p in paths)   # a fractured image first, as the notebook looked at
    cfg, spec = resolve("keras215", (60, 36))
    fig, drawn = make_figure(paths, Augment(cfg), spec, n=3, seed=1)
    assert len(fig.axes) == 2 * (1 + 3) and len(drawn) == 2 * 3
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles[0].endswith("as the network sees it") and titles[1] == label(drawn[0])
    assert "rot" in titles[1] and "zoom" in titles[1] and "shift" in titles[1]
    plt.close(fig)
    # the same seed draws the same parameters
    fig2, again = make_figure(paths, Augment(cfg), spec, n=3, seed=1)
    plt.close(fig2)
    assert [d["theta"] for d in again] == [d["theta"] for d in drawn]


def test_cli_writes_the_png_and_refuses_to_overwrite(tmp_path):
    data = write_folder(tmp_path / "d", n_per_class=2, size=(40, 24))
    out = tmp_path / "grid.png"
    args = ["augment-preview", "--data", str(data), "--preset", "seed", "--n", "2", "--size", "40x24",
            "--out", str(out)]
    assert main(args) == 0
    with Image.open(out) as im:
        assert im.size[0] > im.size[1]
    assert main(args) == 2                  # exists: needs --force
    assert main(args + ["--force"]) == 0
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve("nope")
    assert resolve("cpu-demo")[1].size == (384, 224) and resolve("tta")[1].size == (600, 360)
