"""Hand-built per-vertebra tables shared by the tests of tests/vertebra (see test_vertebra_metrics for the
answers worked out on them).

Every body is an axis-aligned box 40 px wide and 30 px tall (ha = hm = hp = 30) unless said
otherwise, so the IoU of a copy shifted down by d px is (30 - d) / (30 + d): d = 6 -> 24/36 = 0.667
(matched), d = 12 -> 18/42 = 0.429 (not matched).
"""
import numpy as np
import pandas as pd

from vfa.evaluation import vertebra_metrics as vm
from vfa.spine import POINTS


def body(y, x=0.0, ha=30.0, hm=30.0, hp=30.0, w=40.0):
    """Six points: anterior wall at x, posterior at x + w, inferior end plate at y + 30."""
    bottom = y + 30
    return np.array([[x, bottom - ha], [x + w / 2, bottom - hm], [x + w, bottom - hp],
                     [x, bottom], [x + w / 2, bottom], [x + w, bottom]], dtype=float)


def table(levels, points, **cols) -> pd.DataFrame:
    pts = np.asarray(points, dtype=float)
    frame = pd.DataFrame({"level": levels})
    for j, name in enumerate(POINTS):
        frame[f"{name}_x"], frame[f"{name}_y"] = pts[:, j, 0], pts[:, j, 1]
    frame["x0"], frame["y0"] = pts[..., 0].min(1), pts[..., 1].min(1)
    frame["x1"], frame["y1"] = pts[..., 0].max(1), pts[..., 1].max(1)
    for key, value in cols.items():
        frame[key] = value
    return frame


LEVELS7 = ["T4", "T5", "T6", "T7", "T8", "T9", "T10"]


def scene():
    """One image, seven true bodies 40 px apart, read as follows:
        T4 exact; T5 exact but named T6; T6 found 6 px low (IoU 0.667, point error 6/30 = 0.2) and
        over-called grade 1; T7 exact; T8 exact but graded 1 (truth 2); T9 exact; T10 missed (its
        prediction lies 12 px low: IoU 0.429); and a spurious grade-3 body far below the spine."""
    truth = table(LEVELS7, [body(40 * i) for i in range(7)], grade=[0, 0, 0, 1, 2, 3, 2],
                  type=["normal"] * 3 + ["wedge", "biconcave", "crush", "wedge"])
    shift = [0, 0, 6, 0, 0, 0, 12]
    pred = table(["T4", "T6", "T6", "T7", "T8", "T9", "T10", "L4"],
                 [body(40 * i + d) for i, d in enumerate(shift)] + [body(1000)],
                 grade=[0, 0, 1, 1, 1, 3, 2, 3], type=["normal", "normal", "wedge", "wedge", "wedge", "crush", "wedge",
                                                       "crush"],
                 p_fracture=[0.1, 0.2, 0.6, 0.7, 0.4, 0.9, 0.8, 0.95],
                 wedge_ratio=[1, 1, 1, 0.76, 1, 1, 0.7, 0.5], biconcave_ratio=1.0,
                 crush_ratio=[1, 1, 1, 1, 1, 0.55, 1, 1])
    return truth, pred


def several_images(k=12):
    """k copies of the scene, each with its own reading: image i misses body i % 7 as well."""
    parts = []
    for i in range(k):
        truth, pred = scene()
        drop = pred.index[i % 7]
        parts.append(vm.match_image(i, truth, pred.drop(index=drop)))
    return pd.concat(parts, ignore_index=True)
