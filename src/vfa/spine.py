"""The spine's vocabulary, one definition for every layer (phantom, per-vertebra tables, morphometry,
DICOM SR/SC, the review app): the levels VFA reads, the six morphometry points, the outline through
them, the shapes, and the outlines drawn as a reader knows them (colour by Genant grade).

Points are image pixels with the origin at the image's top-left corner (the first pixel's centre is
at 0.5, 0.5), as DICOM spatial coordinates are. Torch-free.
"""
from __future__ import annotations

import math

import numpy as np

LEVELS = ("T4", "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4")
# superior then inferior end plate, each at the anterior wall, the middle and the posterior wall
POINTS = ("sup_ant", "sup_mid", "sup_post", "inf_ant", "inf_mid", "inf_post")
POINT_COLUMNS = tuple(f"{p}_{a}" for p in POINTS for a in "xy")
# the body's outline: the superior end plate anterior to posterior, then the inferior one back
OUTLINE = ("sup_ant", "sup_mid", "sup_post", "inf_post", "inf_mid", "inf_ant")
# a body's shape as the `type` column names it: "normal", then the three fracture shapes
SHAPES = ("normal", "wedge", "biconcave", "crush")
FRACTURE_SHAPES = SHAPES[1:]  # wedge, biconcave, crush
# grade 0 green, 1 yellow, 2 orange, 3 red: the traffic-light order readers use
GRADE_COLOURS = ((60, 200, 90), (250, 220, 40), (255, 140, 20), (235, 40, 40))
NOT_EVALUABLE_COLOUR = (150, 150, 150)   # a level the reader could not read: gray, dashed, "n/e"


def outline(row, closed: bool = False) -> np.ndarray:
    """(6, 2) outline points of one vertebra row (a mapping with the point columns); `closed`
    repeats the first point at the end (a DICOM closed POLYLINE)."""
    order = OUTLINE + (OUTLINE[:1] if closed else ())
    return np.array([[float(row[f"{k}_x"]), float(row[f"{k}_y"])] for k in order], dtype=np.float32)


def evaluable(row) -> bool:
    """Whether a vertebrae.csv row was read: not when its `evaluable` is 0 or its grade is empty
    (a level the reader could not read is reported "not evaluable", docs/vertebrae.md)."""
    flag, grade = row.get("evaluable", 1), row.get("grade", 0)
    return not _missing(grade) and (_missing(flag) or float(flag) != 0)


def _missing(value) -> bool:
    """None, NaN, pandas' NA or an empty string (what an empty CSV cell reads as)."""
    try:
        return value is None or math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def _dashed(draw, poly, colour, width: int, dash: float) -> None:
    """The polyline `poly` as dashes `dash` px long with gaps as long."""
    for (x0, y0), (x1, y1) in zip(poly[:-1], poly[1:]):
        n = max(1, int(np.hypot(x1 - x0, y1 - y0) // dash))
        for k in range(0, n, 2):
            a, b = k / n, min(k + 1, n) / n
            draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))],
                      fill=colour, width=width)


def draw_outlines(image, rows, scale: float = 1.0, font_size: int | None = None, shapes: bool = True):
    """`image` (a PIL RGB image, already `scale` x the size the points refer to) with each row's
    outline in its grade's colour and its level (and, for a fracture, grade and shape) beside the
    posterior wall; a body not evaluable (`evaluable`) gray and dashed, labelled "n/e". Returns the
    image, drawn in place."""
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(image)
    size = font_size or max(10, image.size[1] // 60)
    font = ImageFont.load_default(size=size)
    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
    for r in rows:
        poly = [tuple(p) for p in outline(r, closed=True) * scale]
        if not evaluable(r):
            _dashed(draw, poly, NOT_EVALUABLE_COLOUR, max(1, round(scale)), 3 * scale)
            draw.text((max(x for x, _ in poly) + 3 * scale, float(np.mean([y for _, y in poly[:-1]])) - size / 2),
                      f"{r['level']} n/e", fill=NOT_EVALUABLE_COLOUR, font=font)
            continue
        grade = min(max(int(float(r.get("grade", 0) or 0)), 0), 3)
        colour = GRADE_COLOURS[grade]
        draw.line(poly, fill=colour, width=max(1, round(scale)))
        text = str(r["level"]) + (f" G{grade}" + (f" {r.get('type', '')}" if shapes else "") if grade else "")
        draw.text((max(x for x, _ in poly) + 3 * scale, float(np.mean([y for _, y in poly[:-1]])) - size / 2),
                  text, fill=colour, font=font)
    return image
