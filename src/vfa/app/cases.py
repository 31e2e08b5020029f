"""The worklist's cases: a predictions CSV (vfa predict / evaluate), checked line by line, with
each image's file resolved once at start-up, its heatmap overlay (vfa heatmap's naming) and its
vertebrae (vertebrae.csv) when given. Only the paths resolved here are ever served: nothing in a
request reaches the file system.

Every problem is a `ReviewError` naming the file, the CSV line and the reason.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from vfa.errors import ConfigError
from vfa.io.identifiers import IDENTIFIER_KEYWORDS, public_path
from vfa.spine import LEVELS, OUTLINE

SCORES = ("p_fracture", "raw", "tta_mean", "tta_max")
_HEATMAP = re.compile(r"^heatmap_\d{3}_(.+)$")
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ReviewError(ConfigError):
    """A problem in vfa review's inputs or database: one line naming the file (and CSV line)."""


@dataclass
class Case:
    idx: int
    image_id: str
    file: str                 # as in the predictions CSV (public unless --keep-identifiers there)
    path: str                 # resolved image file (server side only, never shown)
    p: float
    call: int
    label: int | None = None
    split: str = ""
    heatmap: str | None = None
    vertebrae: list = field(default_factory=list)
    identifiers: dict = field(default_factory=dict)

    @property
    def model_grade(self) -> int | None:
        grades = [v["grade"] for v in self.vertebrae if v.get("grade") is not None]
        return max(grades) if grades else None


def _read(path: Path, what: str):
    from vfa.io.tables import read_table

    frame = read_table(path, what, ReviewError)
    if frame.empty:
        raise ReviewError(f"{path}: no rows")
    return frame


def _number(text: str, path, line: int, column: str, lo=-math.inf, hi=math.inf) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ReviewError(f"{path}: line {line}: '{column}' is not a number ({text!r})") from None
    if not (lo <= value <= hi):
        raise ReviewError(f"{path}: line {line}: '{column}' = {value} is outside [{lo}, {hi}]")
    return value


def _metrics(predictions: Path) -> dict:
    """metrics.json beside an evaluate output: its primary score and threshold."""
    for name in ("metrics.json", predictions.name.replace("predictions.csv", "metrics.json")):
        p = predictions.with_name(name)
        if name.endswith("metrics.json") and p.is_file():
            try:
                return json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}
    return {}


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def resolve_image(file: str, root: Path, path, line: int) -> str:
    given = Path(file)
    target = given if given.is_absolute() else root / given
    if not target.is_file():
        raise ReviewError(f"{path}: line {line}: image file not found: {file} (looked in {root}; see --images)")
    real = target.resolve()
    if not given.is_absolute() and not _inside(real, root.resolve()):
        raise ReviewError(f"{path}: line {line}: {file} resolves outside {root} (a symlink?); refused")
    return str(real)


def heatmap_index(folder: Path) -> dict[str, str]:
    """{relative overlay target ("frac/x.png"): overlay path} of vfa heatmap's heatmap_NNN_NAME files,
    only regular files that resolve inside `folder`."""
    if not folder.is_dir():
        raise ReviewError(f"heatmaps folder not found: {folder}")
    root = folder.resolve()
    out = {}
    for f in sorted(folder.rglob("heatmap_*")):
        m = _HEATMAP.match(f.name)
        real = f.resolve()
        if m and real.is_file() and _inside(real, root):
            out[(f.parent.relative_to(folder) / m.group(1)).as_posix()] = str(real)
    return out


def _overlay_key(file: str) -> str:
    return file if Path(file).suffix.lower() in _IMAGE_EXT else f"{file}.png"


def read_vertebrae(path: str | Path) -> dict[str, list[dict]]:
    """vertebrae.csv -> {file: [{level, outline [[x, y] x 6] or None, box or None, grade, type, p,
    evaluable}]} (evaluable False: the model reported the level not evaluable)."""
    path = Path(path)
    frame = _read(path, "vertebrae file")
    key = "file" if "file" in frame.columns else "filename" if "filename" in frame.columns else None
    if key is None or "level" not in frame.columns:
        raise ReviewError(f"{path}: needs columns file and level (columns: {', '.join(frame.columns)})")
    cols = set(frame.columns)
    has_pts = all(f"{p}_{a}" in cols for p in OUTLINE for a in "xy")
    has_box = all(c in cols for c in ("x0", "y0", "x1", "y1"))
    out: dict[str, list[dict]] = {}
    for i, rec in enumerate(frame.to_dict("records")):
        line = i + 2
        level = rec["level"].strip()
        if level not in LEVELS:
            raise ReviewError(f"{path}: line {line}: unknown level {level!r} (expected T4..L4)")
        v = {"level": level, "outline": None, "box": None, "grade": None, "type": "", "p": None}
        if has_pts and all(rec[f"{p}_{a}"] != "" for p in OUTLINE for a in "xy"):
            v["outline"] = [[_number(rec[f"{p}_x"], path, line, f"{p}_x"), _number(rec[f"{p}_y"], path, line, f"{p}_y")]
                            for p in OUTLINE]
        if has_box and all(rec[c] != "" for c in ("x0", "y0", "x1", "y1")):
            v["box"] = [_number(rec[c], path, line, c) for c in ("x0", "y0", "x1", "y1")]
        if rec.get("grade", "") != "":
            v["grade"] = int(_number(rec["grade"], path, line, "grade", 0, 3))
        v["type"] = rec.get("type", "").strip()
        if rec.get("p_fracture", "") != "":
            v["p"] = _number(rec["p_fracture"], path, line, "p_fracture", 0, 1)
        v["evaluable"] = str(rec.get("evaluable", "")).strip() not in ("0", "0.0")   # the model could not read it
        out.setdefault(rec[key].strip(), []).append(v)
    return out


def _match_vertebrae(vertebrae: dict, by_name: dict, file: str) -> list:
    if file in vertebrae:
        return vertebrae[file]
    for k in by_name.get(Path(file).name, ()):  # vertebrae.csv of the whole phantom: test/frac/x.png
        if k.endswith("/" + file):
            return vertebrae[k]
    return []


def _default_root(predictions: Path, metrics: dict, first: str) -> Path:
    """Without --images: the folder `vfa evaluate` read (metrics.json's "data") when the first file is
    there, else the CSV's own folder."""
    data = Path(str(metrics.get("data") or ""))
    if metrics.get("data") and data.is_dir() and (data / first).is_file():
        return data
    return predictions.parent


def _columns(frame, path, score: str | None) -> tuple[str, str]:
    cols = list(frame.columns)
    file_col = "file" if "file" in cols else "path" if "path" in cols else None
    if file_col is None:
        raise ReviewError(f"{path}: no 'file' column (columns: {', '.join(cols)}); a vfa predict/evaluate output")
    if score and score not in cols:
        raise ReviewError(f"{path}: no score column '{score}' (columns: {', '.join(cols)})")
    score = score or next((s for s in SCORES if s in cols), None)
    if score is None:
        raise ReviewError(f"{path}: no P(fracture) column (one of {', '.join(SCORES)}; columns: {', '.join(cols)})")
    return file_col, score


def load_cases(predictions: str | Path, images: str | Path | None = None, heatmaps: str | Path | None = None,
               vertebrae: str | Path | None = None, threshold: float | None = None, score: str | None = None,
               keep_identifiers: bool = False) -> tuple[list[Case], dict]:
    """The cases of a predictions CSV and the settings found ({"score", "threshold", ...}), in one
    pass that checks each line (columns, numbers, duplicates, files) so that every problem is one
    message naming its line. Relative `file`s are looked up under `images` (default: the data folder
    in metrics.json beside the CSV, i.e. what vfa evaluate read, else the CSV's folder). The score
    and threshold are the given ones, else metrics.json's beside the CSV, else the first score
    column and 0.5."""
    predictions = Path(predictions)
    frame = _read(predictions, "predictions file")
    metrics = _metrics(predictions)
    file_col, score = _columns(frame, predictions, score or (metrics.get("score") if metrics.get("score") in frame
                                                             else None))
    if threshold is None:
        threshold = float(metrics.get("threshold", 0.5)) if metrics.get("score") == score else 0.5
    root = Path(images) if images else _default_root(predictions, metrics, frame[file_col].iloc[0].strip())
    if not root.is_dir():
        raise ReviewError(f"images folder not found: {root}")
    overlays = heatmap_index(Path(heatmaps)) if heatmaps else {}
    verts = read_vertebrae(vertebrae) if vertebrae else {}
    by_name: dict[str, list[str]] = {}
    for k in verts:
        by_name.setdefault(Path(k).name, []).append(k)
    id_col = "image_id" if "image_id" in frame.columns else file_col
    ident_cols = [c for c in IDENTIFIER_KEYWORDS if c in frame.columns] if keep_identifiers else []
    cases, seen = [], {}
    for i, rec in enumerate(frame.to_dict("records")):
        line = i + 2
        file, image_id = rec[file_col].strip(), rec[id_col].strip()
        if not file:
            raise ReviewError(f"{predictions}: line {line}: empty '{file_col}'")
        if image_id in seen:
            raise ReviewError(f"{predictions}: line {line}: image {public_path(image_id)!r} is listed twice "
                              f"(first on line {seen[image_id]})")
        seen[image_id] = line
        p = _number(rec[score], predictions, line, score, 0.0, 1.0)
        call = (int(_number(rec["predicted"], predictions, line, "predicted", 0, 1)) if rec.get("predicted", "") != ""
                else int(p >= threshold))
        label = int(_number(rec["label"], predictions, line, "label", 0, 1)) if rec.get("label", "") != "" else None
        cases.append(Case(idx=len(cases) + 1, image_id=image_id, file=file,
                          path=resolve_image(file, root, predictions, line), p=p, call=call, label=label,
                          split=rec.get("split", "").strip(), heatmap=overlays.get(_overlay_key(file)),
                          vertebrae=_match_vertebrae(verts, by_name, file),
                          identifiers={c: rec[c] for c in ident_cols if rec[c]}))
    meta = {"score": score, "threshold": threshold, "n": len(cases),
            "heatmaps": sum(c.heatmap is not None for c in cases),
            "with_vertebrae": sum(bool(c.vertebrae) for c in cases)}
    return cases, meta
