"""Tests for vfa.augment: Keras 2.1.5 geometry pinned by hand and against scipy; presets; determinism."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import affine_transform

from vfa.data.augment import PRESETS, Augment, AugmentConfig, apply_affine, channel_shift, get_augment_config, resize

H, W = 21, 13  # o = (H/2 + 0.5, W/2 + 0.5) = (11, 7)


def marked(r, c, h=H, w=W):
    x = torch.zeros(1, h, w, dtype=torch.float64)
    x[0, r, c] = 1.0
    return x


def where(x, tol=1e-9):
    return [tuple(map(int, i)) for i in torch.nonzero(x[0].abs() > tol)]


def keras_matrix(h, w, theta=0.0, tx=0.0, ty=0.0, shear=0.0, zx=1.0, zy=1.0):
    """Keras 2.1.5 random_transform + transform_matrix_offset_center, written out independently."""
    t, s = np.deg2rad(theta), np.deg2rad(shear)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    shr = np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
    zoom = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    m = rot @ shift @ shr @ zoom
    ox, oy = h / 2 + 0.5, w / 2 + 0.5
    m = np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1]]) @ m @ np.array([[1, 0, -ox], [0, 1, -oy], [0, 0, 1]])
    return m[:2, :2], m[:2, 2]


# --- geometry, hand-computed --------------------------------------------------------------------

def test_identity_is_exact():
    x = torch.rand(3, H, W)
    assert torch.equal(apply_affine(x), x)
    # the general path (tensor parameters) is exact at identity too
    assert torch.equal(apply_affine(x[None], torch.zeros(1), zx=torch.ones(1))[0], x)


def test_shift_is_inverse_map():
    # q = p + (tx, ty): output (7, 8) reads input (10, 6) -> content moves by (-tx, -ty)
    out = apply_affine(marked(10, 6), tx=3, ty=-2)
    assert where(out) == [(7, 8)]
    assert out[0, 7, 8] == pytest.approx(1.0)


def test_rotation_90_about_keras_centre():
    # q_r = -(p_c - 7) + 11 = 18 - p_c, q_c = (p_r - 11) + 7 = p_r - 4; input (10, 6) <- p = (10, 8)
    out = apply_affine(marked(10, 6), theta=90.0)
    assert where(out) == [(10, 8)]
    assert out[0, 10, 8] == pytest.approx(1.0, abs=1e-9)


def test_zoom_out_rows():
    # q_r = 2 (p_r - 11) + 11: input row 13 <- output row 12; columns untouched
    out = apply_affine(marked(13, 6), zx=2.0)
    assert where(out) == [(12, 6)]
    # q_r in [0, 20] <=> p_r in [5.5, 15.5]: rows 6..15 keep content, the rest is fill; the
    # asymmetry (6 rows above, 5 below) is Keras' off-centre o = H/2 + 0.5
    filled = apply_affine(torch.full((1, H, W), 0.5, dtype=torch.float64), zx=2.0, fill=-1.0)
    assert (filled[0, :6] == -1).all() and (filled[0, 6:16] == 0.5).all() and (filled[0, 16:] == -1).all()


def test_shear_30_degrees():
    # q_r = p_r - sin30 (p_c - 7), q_c = cos30 (p_c - 7) + 7; p = (12, 9) -> q = (11, 7 + sqrt 3)
    # bilinear between input (11, 8) and (11, 9): weight of (11, 9) is sqrt(3) - 1
    out = apply_affine(marked(11, 9), shear=30.0)
    assert out[0, 12, 9] == pytest.approx(math.sqrt(3) - 1, abs=1e-9)
    assert out[0, 12, 8] == 0  # q = (11.5, 7.87): neighbours rows 11-12, cols 7-8, not the mark


@pytest.mark.parametrize("params", [
    dict(theta=17.0),
    dict(tx=2.3, ty=-1.7),
    dict(shear=11.0, zx=0.93, zy=1.08),
    dict(theta=-23.0, tx=-3.1, ty=1.2, shear=8.0, zx=1.07, zy=0.91),
    dict(theta=41.0, tx=1.5, ty=2.5, shear=-0.2, zx=0.9, zy=1.1),
])
def test_matches_scipy_affine_transform(params):
    rng = np.random.default_rng(0)
    img = rng.random((H, W))
    m, off = keras_matrix(H, W, **params)
    ref = affine_transform(img, m, off, order=1, mode="constant", cval=0.0)
    out = apply_affine(torch.from_numpy(img)[None], **params)[0].numpy()
    np.testing.assert_allclose(out[2:-2, 2:-2], ref[2:-2, 2:-2], atol=1e-5)
    # everywhere, except where q falls within a hair of the input's edge (in/out is a rounding call)
    p = np.stack(np.meshgrid(np.arange(H), np.arange(W), indexing="ij"), -1).reshape(-1, 2)
    q = p @ m.T + off
    edge = ((np.abs(q[:, 0]) < 1e-6) | (np.abs(q[:, 0] - (H - 1)) < 1e-6)
            | (np.abs(q[:, 1]) < 1e-6) | (np.abs(q[:, 1] - (W - 1)) < 1e-6)).reshape(H, W)
    np.testing.assert_allclose(out[~edge], ref[~edge], atol=1e-5)


def test_float32_and_fill_preserved():
    x = torch.rand(3, H, W)
    out = apply_affine(x, theta=30.0, fill=0.25)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out[:, 0, 0].eq(0.25).all()  # the corner reads from outside after rotation


def test_batch_per_sample_equals_single_calls():
    x = torch.rand(3, 2, H, W)
    p = dict(theta=torch.tensor([0.0, 12.0, -30.0]), tx=torch.tensor([1.0, -2.5, 0.0]), ty=2.0,
             shear=torch.tensor([0.0, 5.0, -5.0]), zx=torch.tensor([1.0, 0.9, 1.1]), zy=1.05)
    out = apply_affine(x, **p)
    for i in range(3):
        pi = {k: (float(v[i]) if torch.is_tensor(v) else v) for k, v in p.items()}
        torch.testing.assert_close(out[i], apply_affine(x[i], **pi), rtol=0, atol=1e-6)


# --- resize -------------------------------------------------------------------------------------

@pytest.mark.parametrize("src,dst", [((7, 5), (17, 11)), ((20, 15), (6, 4)), ((9, 9), (9, 13))])
def test_nearest_matches_pil(src, dst):
    arr = np.random.default_rng(1).integers(0, 256, src, dtype=np.uint8)
    ref = np.asarray(Image.fromarray(arr).resize((dst[1], dst[0]), Image.NEAREST))
    out = resize(torch.from_numpy(arr).float()[None], dst, "nearest")
    assert out.shape == (1, *dst)
    np.testing.assert_array_equal(out[0].numpy(), ref.astype(np.float32))


def test_bilinear_shape_and_range():
    x = torch.rand(2, 3, 40, 24)
    out = resize(x, (15, 9), "bilinear")
    assert out.shape == (2, 3, 15, 9)
    assert out.min() >= x.min() - 1e-6 and out.max() <= x.max() + 1e-6
    with pytest.raises(ValueError):
        resize(x, (15, 9), "bicubic")


# --- channel shift ------------------------------------------------------------------------------

def test_channel_shift_keras_clips_to_image_range():
    x = torch.tensor([[[0.2, 0.5]], [[0.3, 0.6]]])  # (C=2, 1, 2): image range 0.2..0.6
    out = channel_shift(x, torch.tensor([25.5, -25.5]), scale=255.0, clip="image")
    torch.testing.assert_close(out, torch.tensor([[[0.3, 0.6]], [[0.2, 0.5]]]))
    out = channel_shift(x, torch.tensor([0.1, -0.1]), scale=255.0, clip="image")  # Keras' +-0.1
    torch.testing.assert_close(out, x + torch.tensor([0.1, -0.1]).view(2, 1, 1) / 255)


def test_channel_shift_unit_clips_to_01():
    x = torch.tensor([[[0.95, 0.5]], [[0.05, 0.5]]])
    out = channel_shift(x, torch.tensor([0.1, -0.1]), scale=1.0, clip="unit")
    torch.testing.assert_close(out, torch.tensor([[[1.0, 0.6]], [[0.0, 0.4]]]))


def test_channel_shift_batch_uses_per_image_range():
    x = torch.stack([torch.full((3, 2, 2), 0.4), torch.rand(3, 2, 2)])
    out = channel_shift(x, torch.full((2, 3), 50.0), scale=255.0, clip="image")
    assert torch.equal(out[0], x[0])  # a flat image cannot move at all


# --- presets, drawing, determinism --------------------------------------------------------------

def test_presets_and_overrides():
    assert set(PRESETS) >= {"seed", "keras215", "tta", "tta-keras215", "none"}
    cfg = get_augment_config("keras215", rotation=5.0)
    assert cfg.rotation == 5.0 and PRESETS["keras215"].rotation == 30.0
    tta = PRESETS["tta"]
    assert (tta.rotation, tta.zoom, tta.channel_shift, tta.shift_rows, tta.shear) == (20, 0.1, 0.1, 0, 0)
    with pytest.raises(ValueError, match="seed"):
        get_augment_config("nope")
    with pytest.raises(ValueError, match="rotation"):
        get_augment_config("seed", rotaton=3)
    with pytest.raises(ValueError):
        AugmentConfig(shear_units="gradians")


def test_keras215_draws():
    p = Augment("keras215").draw(torch.Generator().manual_seed(0), 400, size=(600, 360))
    assert p["shear"].abs().max() <= 0.2
    assert (p["zx"] != p["zy"]).all()
    assert p["theta"].abs().max() <= 30 and p["tx"].abs().max() <= 120 and p["ty"].abs().max() <= 72
    assert p["tx"].abs().max() > 100  # shifts are in pixels
    assert p["channel_shift"].shape == (400, 3) and p["channel_shift"].abs().max() <= 0.1


def test_seed_draws():
    p = Augment("seed").draw(torch.Generator().manual_seed(0), 400, size=(600, 360))
    assert 8.0 < p["shear"].abs().max() <= math.degrees(0.2) + 1e-9  # 0.2 rad ~ 11.46 deg
    assert torch.equal(p["zx"], p["zy"])
    assert ((p["zx"] >= 0.9) & (p["zx"] <= 1.1)).all()


def test_draw_skips_zero_ranges():
    g = torch.Generator().manual_seed(3)
    p = Augment("none").draw(g, size=(8, 8))
    assert p["theta"] == p["tx"] == p["ty"] == p["shear"] == 0.0 and p["zx"] == p["zy"] == 1.0
    # no random numbers were consumed
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(3).get_state())
    tta = Augment("tta").draw(torch.Generator().manual_seed(0))  # no shifts -> size not needed
    assert tta["tx"] == tta["ty"] == tta["shear"] == 0.0 and tta["theta"] != 0.0


def test_none_preset_is_identity():
    x = torch.rand(3, H, W)
    assert torch.equal(Augment("none")(x, torch.Generator().manual_seed(0)), x)


@pytest.mark.parametrize("preset", ["seed", "keras215", "tta"])
def test_deterministic_and_replayable(preset):
    aug = Augment(preset)
    x = torch.rand(3, H, W)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(8)))
    p = aug.draw(torch.Generator().manual_seed(7), size=(H, W), channels=3)
    assert torch.equal(aug.apply(x, p), a)


def test_batch_call_draws_per_sample():
    aug = Augment("seed")
    x = torch.rand(1, 3, H, W).expand(4, 3, H, W).contiguous()
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out[0], out[1])
    p = aug.draw(torch.Generator().manual_seed(0), 4, size=(H, W), channels=3)
    for i in range(4):
        pi = {k: v[i] for k, v in p.items()}
        torch.testing.assert_close(aug.apply(x[i], pi), out[i], rtol=0, atol=1e-6)


def test_gray_input_with_three_channels_matches_three_channel_input():
    from vfa.data.augment import Augment

    gray = torch.rand(1, 30, 18)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = Augment("seed")(gray, g1, channels=3)
    b = Augment("seed")(gray.expand(3, -1, -1).contiguous(), g2)
    assert a.shape == (3, 30, 18)
    torch.testing.assert_close(a, b)


# --- the vendor range (the `vendor` preset, from vfa.vendors' table) ---------------------------

def test_vendor_preset_is_derived_from_the_vendor_table(monkeypatch):
    from vfa import vendors

    cfg = PRESETS["vendor"]
    gam = vendors.span("gamma")
    assert cfg.gamma == pytest.approx(math.log(gam[1] / gam[0]), abs=1e-4)
    noise = vendors.span("noise")
    assert cfg.noise == pytest.approx(math.sqrt(noise[1] ** 2 - noise[0] ** 2), abs=1e-4)
    assert cfg.noise_rows == min(v["rows"][0] for v in vendors.VENDORS.values())
    assert 0 < cfg.blur < 0.01 and 0 < cfg.contrast < 0.1
    # a wider table widens the preset: the numbers are read, not copied
    wider = {k: dict(v) for k, v in vendors.VENDORS.items()}
    wider["lunar"]["gamma"] = (1.0, 2.0)
    wider["lunar"]["lp_mm"] = (0.2, 0.6)
    monkeypatch.setattr(vendors, "VENDORS", wider)   # span() reads the module's table
    again = AugmentConfig(**vendors.augment_ranges())
    assert again.gamma > cfg.gamma and again.blur > cfg.blur


def test_the_phantom_reads_the_same_table():
    from vfa import vendors
    from vfa.phantom import vendors as phantom_vendors

    assert phantom_vendors.VENDORS is vendors.VENDORS and phantom_vendors.MTF10_SIGMA == vendors.MTF10_SIGMA


def test_other_presets_draw_nothing_new():
    """The vendor parameters are drawn only where asked: every other preset's stream is unchanged."""
    for name in ("seed", "keras215", "tta", "none"):
        p = Augment(name).draw(torch.Generator().manual_seed(0), size=(H, W))
        assert not {"blur", "gamma", "contrast", "noise", "noise_seed"} & set(p), name


def test_vendor_look_each_part():
    from vfa.data.augment import vendor_look

    x = torch.linspace(0, 1, 64 * 40).reshape(1, 64, 40)
    assert torch.equal(vendor_look(x, {}), x)
    edge = (torch.arange(40) >= 20).float().expand(1, 64, 40).contiguous()
    blurred = vendor_look(edge, {"blur": 2.0 / 64})            # sigma 2 px
    assert 0 < blurred[0, 10, 19] < 0.5 < blurred[0, 10, 20] < 1 and blurred[0, 10, 0] == pytest.approx(0)
    torch.testing.assert_close(vendor_look(x, {"gamma": 2.0}), x ** 2)
    stretched = vendor_look(x, {"contrast": 0.1, "contrast_hi": 0.1})
    assert stretched.min() == 0 and stretched.max() == 1
    assert (stretched == 0).float().mean() == pytest.approx(0.1, abs=0.01)
    flat = torch.full((1, 200, 100), 0.5)
    noisy = vendor_look(flat, {"noise": 0.05, "noise_seed": 3}, noise_rows=400)   # at half the rows: sd halves
    assert noisy.std().item() == pytest.approx(0.025, rel=0.05)
    assert torch.equal(noisy, vendor_look(flat, {"noise": 0.05, "noise_seed": 3}, noise_rows=400))


def test_vendor_preset_replayable_and_batched():
    aug = Augment("vendor")
    x = torch.rand(1, H, W)
    a = aug(x, torch.Generator().manual_seed(7), channels=3)
    p = aug.draw(torch.Generator().manual_seed(7), size=(H, W), channels=3)
    assert {"blur", "gamma", "contrast", "noise"} <= set(p) and a.shape == (3, H, W)
    assert torch.equal(aug.apply(x, p), a) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a[0], a[2])   # one gray look, replicated
    out = aug(x.expand(4, 1, H, W).contiguous(), torch.Generator().manual_seed(1), channels=3)
    assert out.shape == (4, 3, H, W) and not torch.equal(out[0], out[1])
