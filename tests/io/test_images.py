import numpy as np
import pytest
from PIL import Image

from vfa.io import BadImageError, read_image
from vfa.io.images import probe_image


def test_8bit_is_divided_by_255(tmp_path):
    arr = np.array([[0, 128, 255]], dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), arr / 255.0, atol=1e-7)


def test_16bit_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 1000, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    np.testing.assert_allclose(out, arr / 65535.0, atol=1e-6)
    assert 0 < out[0, 1] < 0.02  # Pillow's RGB conversion would clip 1000 to 255


def test_rgb_and_rgba_become_gray(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., :] = 200
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((4, 4), 10, np.uint8)])).save(tmp_path / "rgba.png")
    assert read_image(tmp_path / "rgb.png").shape == (4, 4)
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png"), 200 / 255, atol=1e-2)


@pytest.mark.parametrize("case, reason", [
    ("missing", "not found"), ("empty", "empty file"), ("text", "cannot decode"), ("truncated", "cannot decode")])
def test_bad_files_name_file_and_reason(tmp_path, case, reason):
    path = tmp_path / f"{case}.png"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("not an image")
    elif case == "truncated":
        Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(BadImageError, match=reason) as info:
        read_image(path)
    assert str(path) in str(info.value)
    if case != "missing":
        with pytest.raises(BadImageError):
            probe_image(path)


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    import vfa.io.images as images

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(BadImageError, match="too large"):
        read_image(tmp_path / "big.png")
