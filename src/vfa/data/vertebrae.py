"""Per-vertebra truth: the vertebrae.csv table (docs/vertebrae.md), validated like a manifest, and
the dataset that pairs each image with its bodies' six points.

One row per vertebra: `filename` (or `file`/`path`: the image, relative to the table's folder), `level`
(T4..L4) and either the six morphometry points (`sup_ant_x, sup_ant_y, ... inf_post_y`, image
pixels, origin at the top-left corner) or only a `grade` (0-3), as DXA morphometry software and
annotation tools export them; `type` (normal/wedge/biconcave/crush) is optional, and so are
`readable` (1, 0 for a level that cannot be read, or empty: not said) and `mimic` (what a normal
body resembles a fracture by, `none` or a kind; free text). Every problem is named with its CSV line:
an unknown level, a level listed twice for one image, a point that is not a number or lies far outside
its image (a partial view's body may cross its edge: PARTIAL_MARGIN), a grade outside 0-3, an unknown
type, a readable flag other than 0 or 1.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from vfa.data.samples import MANIFEST_PATH_COLUMNS, DataError, Samples
from vfa.io.images import probe_image
from vfa.io.tables import read_table
from vfa.spine import LEVELS, POINT_COLUMNS, SHAPES


def find_table(source: str | Path, given: str | None = None) -> Path:
    """The per-vertebra table of a data argument: `given` (vertebra.table), else vertebrae.csv in
    the manifest's folder, the class folder or its parent."""
    if given:
        return Path(given)
    src = Path(str(source).split(":")[0] if str(source).endswith(tuple(f":{s}" for s in ("train", "val", "test")))
               else source)
    for folder in ((src.parent,) if src.suffix == ".csv" else (src, src.parent)):
        if (folder / "vertebrae.csv").is_file():
            return folder / "vertebrae.csv"
    raise DataError(f"no per-vertebra table for {source}: expected vertebrae.csv beside it (vfa synth writes "
                    f"one) or vertebra.table=PATH (format: docs/vertebrae.md)")


def _problem(path: Path, line: int, what: str) -> DataError:
    return DataError(f"{path} line {line}: {what}")


def _numbers(frame: pd.DataFrame, cols, path: Path) -> np.ndarray:
    out = np.full((len(frame), len(cols)), np.nan)
    for j, col in enumerate(cols):
        for i, (raw, line) in enumerate(zip(frame[col], frame["_line"])):
            try:
                out[i, j] = float(raw)
            except ValueError:
                raise _problem(path, line, f"{col} is not a number: {raw!r}") from None
            if not np.isfinite(out[i, j]):
                raise _problem(path, line, f"{col} is not a finite number: {raw!r}")
    return out


def read_vertebrae(path: str | Path, check_images: bool = True) -> pd.DataFrame:
    """The table at `path`, validated; adds `path` (the image's full path), `level_index` and, when
    the table has points, float point columns. `check_images` also checks that every point lies
    inside its image (reads each image's header)."""
    path = Path(path)
    frame = read_table(path, "per-vertebra table", DataError)
    frame["_line"] = range(2, len(frame) + 2)
    lower = {c.lower(): c for c in frame.columns}
    key = next((lower[c] for c in MANIFEST_PATH_COLUMNS if c in lower), None)
    if key is None or "level" not in lower:
        raise DataError(f"{path}: a per-vertebra table needs 'filename' and 'level' columns (got "
                        f"{', '.join(frame.columns) or 'none'}; docs/vertebrae.md)")
    frame = frame.rename(columns={key: "filename", lower["level"]: "level"})
    bad = frame[~frame["level"].isin(LEVELS)]
    if len(bad):
        raise _problem(path, bad["_line"].iloc[0], f"unknown level {bad['level'].iloc[0]!r} (expected one of "
                       f"{', '.join(LEVELS)})")
    dup = frame[frame.duplicated(["filename", "level"], keep=False)]
    if len(dup):
        lines = dup[dup["filename"].eq(dup["filename"].iloc[0]) & dup["level"].eq(dup["level"].iloc[0])]["_line"]
        raise _problem(path, lines.iloc[-1], f"level {dup['level'].iloc[0]} listed twice for one image (lines "
                       f"{', '.join(map(str, lines))})")
    has_points = [c in frame.columns for c in POINT_COLUMNS]
    if any(has_points) and not all(has_points):
        missing = [c for c, h in zip(POINT_COLUMNS, has_points) if not h]
        raise DataError(f"{path}: the six points need all twelve columns; missing {', '.join(missing)}")
    if not any(has_points) and "grade" not in frame.columns:
        raise DataError(f"{path}: neither the six points ({POINT_COLUMNS[0]}, ...) nor a 'grade' column")
    frame["path"] = [str(Path(f) if Path(f).is_absolute() else path.parent / f) for f in frame["filename"]]
    frame["level_index"] = [LEVELS.index(lv) for lv in frame["level"]]
    if "grade" in frame.columns:
        grades = _numbers(frame, ["grade"], path)[:, 0]
        wrong = ~np.isin(grades, [0, 1, 2, 3])
        if wrong.any():
            raise _problem(path, frame["_line"].iloc[np.flatnonzero(wrong)[0]], "grade must be 0, 1, 2 or 3")
        frame["grade"] = grades.astype(int)
    if "type" in frame.columns:
        wrong = ~frame["type"].isin(SHAPES)
        if wrong.any():
            raise _problem(path, frame["_line"][wrong].iloc[0], f"unknown type {frame['type'][wrong].iloc[0]!r} "
                           f"(expected one of {', '.join(SHAPES)})")
    if "readable" in frame.columns:
        frame["readable"] = _readable(frame, path)
    if "mimic" in frame.columns:
        frame["mimic"] = frame["mimic"].fillna("").astype(str).str.strip().replace("", "none")
    if all(has_points):
        frame[list(POINT_COLUMNS)] = _numbers(frame, POINT_COLUMNS, path)
        if check_images:
            _inside(frame, path)
    return frame


def _readable(frame: pd.DataFrame, path: Path) -> np.ndarray:
    """The `readable` column as floats: 1, 0, or NaN where a row leaves it empty (not said)."""
    raw = frame["readable"].fillna("").astype(str).str.strip()
    value = pd.to_numeric(raw.replace("", np.nan), errors="coerce").to_numpy(dtype=float)
    wrong = (raw != "") & ~np.isin(value, [0, 1])
    if wrong.any():
        i = int(np.flatnonzero(wrong.to_numpy())[0])
        raise _problem(path, frame["_line"].iloc[i], f"readable must be 0, 1 or empty, got {raw.iloc[i]!r}")
    return value


def readable_of(rows: pd.DataFrame) -> np.ndarray:
    """Each row's truth readability: 1, 0, or NaN (no `readable` column, or the row leaves it empty)."""
    if "readable" not in rows:
        return np.full(len(rows), np.nan)
    return pd.to_numeric(rows["readable"], errors="coerce").to_numpy(dtype=float)


# a partial view cuts a body at the image's edge, so its true corners may lie outside the image; a point
# farther out than this share of the image's width or height is an error of the table instead (axes
# swapped, another image's scale)
PARTIAL_MARGIN = 0.25


def _inside(frame: pd.DataFrame, path: Path) -> None:
    """Every point within its image, or past its edge by at most PARTIAL_MARGIN of its size."""
    for file, rows in frame.groupby("path", sort=False):
        try:
            h, w = probe_image(file)
        except Exception as exc:  # the image itself is checked (and named) where it is read
            raise _problem(path, rows["_line"].iloc[0], f"cannot read the image {file}: {exc}") from None
        pts = rows[list(POINT_COLUMNS)].to_numpy().reshape(-1, 6, 2)
        mx, my = PARTIAL_MARGIN * w, PARTIAL_MARGIN * h
        out = (pts[..., 0] < -mx) | (pts[..., 0] > w + mx) | (pts[..., 1] < -my) | (pts[..., 1] > h + my)
        if out.any():
            r = int(np.flatnonzero(out.any(1))[0])
            raise _problem(path, rows["_line"].iloc[r], f"a point of {rows['level'].iloc[r]} lies outside its "
                           f"{w}x{h} image (by more than {PARTIAL_MARGIN:.0%} of its size: swapped x and y, "
                           f"or another image's scale?)")


def vendors_of(samples: Samples, source: str | Path) -> list[str] | None:
    """Each sample's `vendor` from the manifest of `source` (the manifest itself, or manifest.csv in
    the folder or its parent), "" for an image it does not list; None without a manifest or without
    a `vendor` column (so a breakdown by vendor is skipped, not guessed)."""
    from vfa.data.samples import is_manifest, split_source

    path = split_source(source)[0]
    found = [path] if is_manifest(source) else [f / "manifest.csv" for f in (path, path.parent)]
    manifest = next((f for f in found if f.is_file()), None)
    if manifest is None:
        return None
    frame = read_table(manifest, "manifest", DataError)
    lower = {c.lower(): c for c in frame.columns}
    key = next((lower[c] for c in MANIFEST_PATH_COLUMNS if c in lower), None)
    if key is None or "vendor" not in lower:
        return None
    where = {str((manifest.parent / f).resolve()): str(v).strip()
             for f, v in zip(frame[key], frame[lower["vendor"]])}
    return [where.get(str(Path(p).resolve()), "") for p in samples.paths]


def truth_for(samples: Samples, table: pd.DataFrame, where: str) -> dict[str, pd.DataFrame]:
    """{image path: its rows} for every sample; an image without rows is an error (naming how many
    and the first), since a model cannot learn to find bodies nobody marked."""
    by_path = {str(Path(p).resolve()): rows for p, rows in table.groupby("path", sort=False)}
    out, missing = {}, []
    for p in samples.paths:
        rows = by_path.get(str(Path(p).resolve()))
        if rows is None:
            missing.append(p)
        else:
            out[p] = rows
    if missing:
        raise DataError(f"{len(missing)} {where} image(s) have no rows in the per-vertebra table, e.g. {missing[0]}")
    return out


class VertebraDataset(Dataset):
    """(image (1, H, W) at the working size, points (13, 6, 2) in its pixels, present (13,),
    grade (13,), index, readable (13,): 1, 0, or -1 where the truth does not say) per image; levels
    without a row are absent (present 0). A transform with
    augmentation (`create_transform(cfg, train=True)`) warps the image and moves the points with
    it; a body it moves (partly) out of the image is absent from that draw."""

    def __init__(self, samples: Samples, truth: dict[str, pd.DataFrame], transform):
        self.samples, self.truth, self.transform = samples, truth, transform

    def __len__(self) -> int:
        return len(self.samples.paths)

    def __getitem__(self, i: int):
        path = self.samples.paths[i]
        img, scale = self.transform.load_scaled(path)
        rows = self.truth[path]
        pts = torch.zeros(len(LEVELS), 6, 2)
        present, grade = torch.zeros(len(LEVELS)), torch.zeros(len(LEVELS), dtype=torch.long)
        idx = torch.as_tensor(rows["level_index"].to_numpy())
        pts[idx] = torch.as_tensor(rows[list(POINT_COLUMNS)].to_numpy(dtype=np.float32)).view(-1, 6, 2) * scale
        present[idx] = 1
        if "grade" in rows:
            grade[idx] = torch.as_tensor(rows["grade"].to_numpy(dtype=np.int64))
        readable = torch.full((len(LEVELS),), -1.0)
        readable[idx] = torch.as_tensor(np.nan_to_num(readable_of(rows), nan=-1.0), dtype=torch.float32)
        if self.transform.augment is not None:
            img, pts, present = _augment(self.transform.augment, img, pts, present)
        return img, pts, present, grade, i, readable


def _augment(aug, img: torch.Tensor, pts: torch.Tensor, present: torch.Tensor):
    """One draw of `aug` (torch's global RNG, seeded per loader worker as the image family's) on the
    image, the same geometry on its bodies' points."""
    from vfa.data.augment import warp_points

    size = tuple(img.shape[-2:])
    params = aug.draw(size=size, channels=1)
    pts = warp_points(pts, params, size)
    inside = ((pts >= 0) & (pts <= torch.tensor([size[1], size[0]]))).all(-1).all(-1)
    present = present * inside
    return aug.apply(img, params), pts * present[:, None, None], present
