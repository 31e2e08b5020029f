"""The per-vertebra reading's parts on hand-made inputs: `detect` on stub heatmaps with known peaks,
`assign_levels` against a brute-force search of its stated objective, `place_points` with a stub
landmark network that finds a bright dot, and the crop maps (vfa.models.crops). No training."""
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from vfa.config import VertebraConfig
from vfa.inference.vertebra import GAP, assign_levels, detect, place_points
from vfa.models.crops import crop, frames, from_crop, refine_frame, to_crop

# ------------------------------------------------------------------ detect on stub heatmaps


class StubDetector(nn.Module):
    """Returns the given maps (B, C, h, w) whatever the input; stride 4 as the real one."""
    stride = 4

    def __init__(self, heat, offset, level):
        super().__init__()
        self.maps = {"heat": heat, "offset": offset, "level": level}
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return self.maps


class StubModel(nn.Module):
    def __init__(self, detector=None, landmarks=None):
        super().__init__()
        self.detector, self.landmarks = detector, landmarks


def maps(peaks, h=16, w=8):
    """(heat logits, offsets, level logits) of one image: peaks are (row, col, (dx, dy), level or
    None for an unsure level, heat logit); the background's logit is -6 (P 0.0025)."""
    heat, off, lvl = torch.full((1, h, w), -6.0), torch.zeros(2, h, w), torch.zeros(13, h, w)
    for r, c, (dx, dy), level, logit in peaks:
        heat[0, r, c], off[:, r, c] = logit, torch.tensor([dx, dy])
        if level is not None:
            lvl[level, r, c] = 8.0              # P(level) = e^8 / (e^8 + 12) = 0.996
    return heat, off, lvl


def test_detect_reads_centres_and_levels_from_known_peaks():
    # image 128 x 64 px, detector input 64 x 32: x and y scale 2; stride 4, so a cell is 8 image px
    a = maps([(2, 3, (0.5, 0.25), 4, 4.0),       # T8 at x (3 + .5) * 8 = 28, y (2 + .25) * 8 = 18
              (2, 4, (0.0, 0.0), 4, 3.5),        # its shoulder: not a 3x3 maximum
              (6, 4, (0.0, 0.5), 5, 4.0),        # T9 at (32, 52)
              (9, 6, (0.0, 0.0), None, -0.75),   # P 0.32, level unsure: a rib, left out
              (13, 3, (0.25, 0.75), 7, 4.0),     # T11 at (26, 110): T10 is missing
              (15, 0, (0.0, 0.0), 0, -1.0)])     # P 0.27: under heat_threshold 0.3
    b = maps([(4, 2, (0.0, 0.0), 0, 3.0), (8, 2, (0.5, 0.5), 1, 3.0)])   # (16, 32) and (20, 68)
    det = StubDetector(*(torch.stack([x, y]) for x, y in zip(a, b)))
    vcfg = VertebraConfig(detector_size=(64, 32))
    (ca, la), (cb, lb) = detect(StubModel(det), torch.zeros(2, 1, 128, 64), vcfg)
    assert det.seen == [(2, 1, 64, 32)]
    assert la.tolist() == [4, 5, 7]
    np.testing.assert_allclose(ca, [[28, 18], [32, 52], [26, 110]], atol=1e-5)
    assert lb.tolist() == [0, 1]
    np.testing.assert_allclose(cb, [[16, 32], [20, 68]], atol=1e-5)


def test_detect_orders_the_bodies_down_the_spine_whatever_the_peak_scores():
    # the caudal body has the strongest peak; levels still follow the image's top-to-bottom order
    m = maps([(3, 3, (0, 0), 2, 2.0), (7, 3, (0, 0), 3, 5.0), (11, 3, (0, 0), 4, 3.0)])
    centres, levels = detect(StubModel(StubDetector(*(x[None] for x in m))), torch.zeros(1, 1, 128, 64),
                             VertebraConfig(detector_size=(64, 32)))[0]
    assert levels.tolist() == [2, 3, 4] and centres[:, 1].tolist() == [24, 56, 88]


# ------------------------------------------------------------------ assign_levels


def brute_force(score, logp, gap):
    """The best value of assign_levels' stated objective over every assignment (levels rising)."""
    k, n = logp.shape
    best = np.sum(np.log(1 - score))                              # keep none
    for m in range(1, k + 1):
        for kept in itertools.combinations(range(k), m):
            dropped = sum(np.log(1 - score[i]) for i in range(k) if i not in kept)
            for lv in itertools.combinations(range(n), m):          # rising levels
                inner = sum(b - a - 1 for a, b in zip(lv, lv[1:]))
                val = dropped + sum(np.log(score[i]) + logp[i, v] for i, v in zip(kept, lv)) - gap * inner
                best = max(best, val)
    return best


def objective(out, score, logp, gap):
    kept = out >= 0
    lv = out[kept]
    assert np.all(np.diff(lv) > 0)
    inner = np.sum(np.diff(lv) - 1)
    return np.sum(np.log(1 - score[~kept])) + np.sum(np.log(score[kept]) + logp[kept, lv]) - gap * inner


@pytest.mark.parametrize("seed", range(6))
def test_assign_levels_finds_the_best_assignment(seed):
    rng = np.random.default_rng(seed)
    k, n = 4, 7
    score = rng.uniform(0.2, 0.95, k)
    logits = rng.normal(0, 2, (k, n))
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    for gap in (0.0, GAP):
        out = assign_levels(score, logp, gap)
        assert objective(out, score, logp, gap) == pytest.approx(brute_force(score, logp, gap))


def test_assign_levels_known_answers():
    p = 0.9
    lp = np.log(np.full((4, 13), (1 - p) / 12))
    for i, v in enumerate([3, 4, 6, 7]):                    # T8 missing inside the column
        lp[i, v] = np.log(p)
    assert assign_levels(np.full(4, 0.9), lp).tolist() == [3, 4, 6, 7]
    # a weak unsure peak between T9 and T11 is left out rather than named T10
    weak = np.insert(lp, 2, np.log(np.full(13, 1 / 13)), axis=0)
    assert assign_levels(np.insert(np.full(4, 0.9), 2, 0.25), weak).tolist() == [3, 4, -1, 6, 7]
    # nothing worth keeping: every peak weak and unsure
    assert assign_levels(np.full(3, 0.05), np.log(np.full((3, 13), 1 / 13))).tolist() == [-1, -1, -1]


# ------------------------------------------------------------------ crops


def test_frames_on_a_straight_spine_with_a_missed_level():
    # centres 20 px apart per level along (3, 4) / 5; level 4 missed, the input not in level order
    levels = np.array([5, 2, 3, 6])
    centres = np.array([[10, 10]]) + (levels[:, None] - 2) * np.array([[12.0, 16.0]])
    axis, side = frames(centres, levels, scale=1.5, fallback=99)
    np.testing.assert_allclose(axis, np.tile([0.6, 0.8], (4, 1)), atol=1e-12)
    np.testing.assert_allclose(side, 1.5 * 20)


def test_frames_at_a_bend_and_for_a_single_body():
    axis, side = frames(np.array([[0.0, 0.0], [0.0, 10.0], [10.0, 20.0]]), np.arange(3), scale=2.0, fallback=5)
    r = math.sqrt(0.5)
    # ends follow their one step; the middle the sum of both steps (10, 20) / |(10, 20)|
    np.testing.assert_allclose(axis, [[0, 1], [1 / math.sqrt(5), 2 / math.sqrt(5)], [r, r]], atol=1e-12)
    np.testing.assert_allclose(side, 2.0 * (10 + math.sqrt(200)) / 2)   # median of the two step lengths
    axis, side = frames(np.array([[5.0, 5.0]]), np.array([7]), scale=2.0, fallback=5)
    assert axis.tolist() == [[0.0, 1.0]] and side.tolist() == [10.0]


def test_crop_coordinates_by_hand():
    p = torch.tensor([[[20.0, 30.0]]])
    centre, side = torch.tensor([[10.0, 20.0]]), torch.tensor([40.0])
    # axis down the image: x across (+ to the right), y down; (10, 10) px off the centre
    assert to_crop(p, centre, torch.tensor([[0.0, 1.0]]), side).tolist() == [[[0.25, 0.25]]]
    # axis to the right: across is then up the image, so the point 10 px below reads -0.25
    assert to_crop(p, centre, torch.tensor([[1.0, 0.0]]), side).tolist() == [[[-0.25, 0.25]]]


def test_to_crop_and_from_crop_are_inverse():
    g = torch.Generator().manual_seed(0)
    ang = torch.rand(5, generator=g) * 6.28
    axis = torch.stack([ang.sin(), ang.cos()], 1)
    centre, side = torch.rand(5, 2, generator=g) * 100, 10 + torch.rand(5, generator=g) * 50
    pts = torch.rand(5, 6, 2, generator=g) * 100
    torch.testing.assert_close(from_crop(to_crop(pts, centre, axis, side), centre, axis, side), pts)


def blob(H, W, x, y, sigma=1.5):
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    return torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))


def peak(crops):
    """(M, 2) crop coordinates of each crop's brightest cell centre."""
    m, _, h, w = crops.shape
    idx = crops.flatten(1).argmax(1)
    return torch.stack([(idx % w + 0.5) / w - 0.5, (idx // w + 0.5) / h - 0.5], 1)


@pytest.mark.parametrize("angle", [0.0, 0.4, -1.1, 2.5])
def test_a_point_cropped_and_mapped_back_lands_where_it_was(angle):
    img = blob(96, 80, 47.5, 38.5)[None, None]     # at a pixel centre: bilinear sampling peaks there
    axis = torch.tensor([[math.sin(angle), math.cos(angle)]])
    centre, side, size = torch.tensor([[40.0, 45.0]]), torch.tensor([40.0]), 64
    q = peak(crop(img, torch.tensor([0]), centre, axis, side, size))
    back = from_crop(q[:, None], centre, axis, side)[0, 0]
    # within one crop cell (40 / 64 px) of the dot, whatever the crop's rotation
    assert torch.linalg.norm(back - torch.tensor([47.5, 38.5])) < 40 / 64
    torch.testing.assert_close(q[0], to_crop(torch.tensor([[[47.5, 38.5]]]), centre, axis, side)[0, 0],
                               atol=1 / 64, rtol=0)


def test_refine_frame_by_hand():
    pts = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [6.0, 8.0], [16.0, 8.0], [26.0, 8.0]]])
    centre, axis = refine_frame(pts)
    torch.testing.assert_close(centre, torch.tensor([[13.0, 4.0]]))
    torch.testing.assert_close(axis, torch.tensor([[0.6, 0.8]]))


# ------------------------------------------------------------------ place_points


class DotFinder(nn.Module):
    """A landmark network that puts the superior points 0.1 of the crop above the crop's brightest
    cell and the inferior ones 0.1 below it; P(fracture) 0.5."""

    def forward(self, crops):
        q = peak(crops)[:, None].repeat(1, 6, 1)
        q[:, :3, 1] -= 0.1
        q[:, 3:, 1] += 0.1
        return q, torch.zeros(len(crops))


def test_place_points_reads_each_body_in_its_own_frame():
    dots = [(30.5, 20.5), (34.5, 52.5), (37.5, 83.5)]    # pixel centres, ~32 px apart
    img = sum(blob(112, 64, x, y) for x, y in dots)[None, None]
    img = torch.cat([img, torch.zeros_like(img)])
    # the detector's centres are 2-3 px off the dots; the second image has no body. Crops one spacing
    # wide (~32 px) hold their own dot only
    found = [(np.array([[28.0, 21.0], [35.0, 50.0], [38.0, 85.0]]), np.array([3, 4, 5])),
             (np.zeros((0, 2)), np.zeros(0, dtype=int))]
    vcfg = VertebraConfig(crop_size=32, crop_scale=1.0)
    (pts, prob, ok, sev), (pts2, prob2, ok2, _) = place_points(StubModel(landmarks=DotFinder()), img, found, vcfg)
    assert pts.shape == (3, 6, 2) and pts2.shape == (0, 6, 2) and len(prob2) == 0 == len(ok2)
    np.testing.assert_allclose(prob, 0.5)
    np.testing.assert_allclose(ok, 1.0)   # a landmark network without a readability output: all readable
    np.testing.assert_allclose(sev, 0.0)  # nor a severity output: P(grade >= 2) and P(grade >= 3) 0
    axis, side = frames(found[0][0], found[0][1], 1.0, 0)
    centre = pts.mean(1)
    # the points straddle each dot: centred on it within a crop cell, 0.2 crop sides apart along the axis
    assert np.linalg.norm(centre - np.array(dots), axis=1).max() < side[0] / 32
    span = pts[:, 3:].mean(1) - pts[:, :3].mean(1)
    np.testing.assert_allclose(np.linalg.norm(span, axis=1), 0.2 * side, rtol=1e-4)
    cos = (span * axis).sum(1) / np.linalg.norm(span, axis=1)
    assert cos.min() > 0.99
