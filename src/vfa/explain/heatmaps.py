"""`vfa heatmap`: overlays for a folder or a predictions CSV, resumable, with the pointing game."""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import torch

from vfa.inference.dicom_results import HeatmapDicom
from vfa.inference.ensemble import load_ensemble
from vfa.config import ConfigError
from vfa.data.samples import Samples, expand_inputs, validate
from vfa.inference.predict import read_predictions
from vfa.io import IMAGE_EXTENSIONS
from vfa.io.identifiers import public_path
from vfa.registry import FAMILIES
from vfa.stats.metrics import outcomes
from vfa.explain.cam import cam_settings, iter_cams, members_of
from vfa.explain.geometry import cam_network, resolve_layer
from vfa.explain.localization import localize, read_manifest, summarize
from vfa.explain.render import encode, heatmap_name, overlay, panel
from vfa.runs import atomic_write, check_out, lock, mark, marked, write_csv, write_json

_DONE = re.compile(r"^(heatmap|panel)_\d{3}_")
CSV_FIELDS = ("file", "p_fracture", "heatmap", "label", "n_boxes", "pointing_hit", "pointing_hit_tol", "mass_in_boxes")


def _label(path: str, classes) -> int | str:
    parent = Path(path).parent.name
    return classes.index(parent) if parent in classes else ""


def overlay_name(name: str) -> str:
    """The overlay keeps the input's image format (as the notebook did); a DICOM or other non-image
    input gets PNG, named NAME.png so the original name stays visible."""
    return name if Path(name).suffix.lower() in IMAGE_EXTENSIONS else f"{name}.png"


def write_heatmaps(model, paths: list[str], out: str | Path, root: str | Path | None = None,
                   method: str | None = None, layer: str | None = None, alpha: float = 0.3,
                   with_panel: bool = False, start_index: int = 0, manifest: str | Path | None = None,
                   batch_size: int = 4, progress: bool = True, output_stride: int | None = None,
                   log=print, device: str = "auto", force: bool = False, inputs=(),
                   keep_identifiers: bool = False, dicom_out=None) -> dict:
    """Overlay (and optionally panel) files for `paths` under `out`, mirroring their folders below `root`.

    Streaming and resumable: an image whose overlay already exists is skipped (and, with a
    manifest of boxes, its localization row in heatmaps.csv is kept), so an interrupted run
    continues where it stopped; heatmaps.csv keeps one row per image. `start_index` skips the
    first images outright, as the notebook's did; `force` redraws the existing ones. Returns
    {"written", "skipped_existing",
    "localization" (with boxes)}. `inputs` (data, model, predictions, boxes) are never overwritten.
    A DICOM UID in a file or folder name becomes a hash in the outputs unless `keep_identifiers`.
    `dicom_out`: also an SR and the overlay as an SC per image drawn (vfa.inference.dicom_results).
    """
    options = dict(locals())  # every option, passed on to the family's heatmap step
    if not isinstance(model, torch.nn.Module) and not hasattr(model, "members"):
        options["model"] = model = load_ensemble(model, device)
    family = FAMILIES.of(model.config)
    family.refuse("heatmap", method=method, target_layer=layer, panel=with_panel, start_index=start_index,
                  boxes=manifest, output_stride=output_stride, dicom_out=dicom_out)
    return family.step("heatmap")(**options)


def write_cams(model, paths: list[str], out: str | Path, root: str | Path | None = None,
               method: str | None = None, layer: str | None = None, alpha: float = 0.3,
               with_panel: bool = False, start_index: int = 0, manifest: str | Path | None = None,
               batch_size: int = 4, progress: bool = True, output_stride: int | None = None,
               log=print, device: str = "auto", force: bool = False, inputs=(),
               keep_identifiers: bool = False, dicom_out=None) -> dict:
    """The image family's heatmap step (`write_heatmaps`): CAM overlays of a loaded model."""
    method, layer = cam_settings(model, method, layer)
    for m in members_of(model):
        resolve_layer(m, cam_settings(m, method, layer)[1])
    out = check_out(out, inputs)
    if out.is_dir() and any(out.iterdir()) and marked(out) != "heatmap":
        raise FileExistsError(f"{out} is not empty and holds no vfa heatmaps; give the heatmaps their own folder")
    table = _Table(out / "heatmaps.csv", root, keep_identifiers)
    dicom = HeatmapDicom(dicom_out, model, paths, force, inputs) if dicom_out else None  # checked before any CAM
    boxes = read_manifest(manifest) if manifest else None
    todo = [p for p in paths[start_index:] if force or not table.has(p, with_panel, boxes is not None)]
    # a bad --output-stride fails before any file
    _, used_stride, _ = cam_network(members_of(model)[0], output_stride, layer)
    log(f"heatmaps: {len(todo)} to write, {len(paths[start_index:]) - len(todo)} already there, "
        f"{min(start_index, len(paths))} before --start-index")
    cams = iter_cams(model, todo, method, layer, batch_size, output_stride)
    if progress:
        from tqdm import tqdm
        cams = tqdm(cams, total=len(todo), desc="heatmaps", unit="img")
    classes = tuple(model.config.data.classes)
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "heatmap")
    with lock(out), table:
        for path, p, gray, heat in cams:
            row = _write_one(out, table.rel(path), p, gray, heat, alpha, with_panel)
            row["label"] = _label(path, classes)
            if boxes is not None:
                fb = boxes.get(os.path.realpath(path))
                row.update(n_boxes=len(fb or []), **(localize(heat, fb) if fb else {}))
            table.add(row, out)
            if dicom:
                dicom(path, row["file"], p, overlay(gray, heat, alpha))
    if dicom:
        dicom.close()
    result = {"written": len(todo), "skipped_existing": len(paths[start_index:]) - len(todo)}
    if boxes is not None:
        wanted = {table.rel(p).as_posix() for p in paths[start_index:]}
        result["localization"] = {**summarize([r for k, r in table.rows.items() if k in wanted]),
                                  "method": method, "layer": layer, "output_stride": used_stride}
        write_json(out / "localization.json", result["localization"])
    return result


def _write_one(out: Path, r: Path, p: float, gray, heat, alpha: float, with_panel: bool) -> dict:
    over = overlay(gray, heat, alpha)
    name = heatmap_name(p, overlay_name(r.name))
    atomic_write(out / r.parent / name, encode(over, name))
    if with_panel:
        pname = heatmap_name(p, Path(r.name).with_suffix(".png").name, "panel")
        atomic_write(out / r.parent / pname, encode(panel(gray, over, p, r.name), pname))
    return {"file": r.as_posix(), "p_fracture": p, "heatmap": (r.parent / name).as_posix()}


class _Table:
    """heatmaps.csv: one row per image. Rows are appended (and flushed) as images are written, so an
    interruption loses nothing; on close the file is rewritten with one row per image, the last."""

    def __init__(self, path: Path, root, keep_identifiers: bool = False):
        self.path, self.root = path, Path(root) if root else None
        self.public = (lambda r: r) if keep_identifiers else public_path
        self.rows: dict[str, dict] = {}
        if path.is_file():
            with open(path, newline="") as f:
                self.rows = {r["file"]: r for r in csv.DictReader(f)}
        out = path.parent
        # one listing of what is there, not one per image: folders may hold tens of thousands
        self.have = {(f.parent.relative_to(out).as_posix(), f.name[len(m.group(0)):], m.group(1))
                     for f in (out.rglob("*") if out.is_dir() else ()) if (m := _DONE.match(f.name))}
        self._file = None

    def rel(self, p: str) -> Path:
        try:
            rel = Path(p).relative_to(self.root).as_posix() if self.root else Path(p).name
        except ValueError:  # outside root (e.g. an absolute path in a predictions CSV)
            rel = Path(p).name
        return Path(self.public(rel))

    def has(self, p: str, with_panel: bool, need_row: bool) -> bool:
        r = self.rel(p)
        ok = (r.parent.as_posix(), overlay_name(r.name), "heatmap") in self.have
        if with_panel:
            ok = ok and (r.parent.as_posix(), Path(r.name).with_suffix(".png").name, "panel") in self.have
        return ok and (not need_row or r.as_posix() in self.rows)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file()
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=CSV_FIELDS)
        if new:
            self._writer.writeheader()
        return self

    def add(self, row: dict, out: Path) -> None:
        old = self.rows.get(row["file"])
        if old and old.get("heatmap") and old["heatmap"] != row["heatmap"]:  # re-done with another p
            stale = (out / old["heatmap"]).resolve()
            if _DONE.match(stale.name) and stale.is_relative_to(out.resolve()):  # only an overlay of ours
                stale.unlink(missing_ok=True)
        self.rows[row["file"]] = row
        self._writer.writerow(row)
        self._file.flush()

    def __exit__(self, *exc):
        self._file.close()
        if exc[0] is None:
            write_csv(self.path, CSV_FIELDS, self.rows.values())
        return False


SELECT = ("all", "tp", "fp", "fn", "tn", "errors")


def heatmap_inputs(model, data, predictions=None, select: str = "all", sample: int | None = None, seed: int = 0,
                   on_bad_file: str = "skip", log=print) -> list[str]:
    """The images `vfa heatmap` draws: every image under `data`, or those of a predictions CSV
    (`select`: tp, fp, fn, tn or errors of its label and predicted columns), checked (bad files
    skipped and reported, or an error), then optionally a seeded random `sample` of them."""
    data = Path(data)
    if select not in SELECT:
        raise ConfigError(f"--select must be one of {', '.join(SELECT)}, got {select!r}")
    if predictions:
        frame = read_predictions(predictions, need_label=select != "all")
        if select != "all":
            masks = outcomes(frame["label"].to_numpy(), frame["predicted"].to_numpy() == 1)
            keep = ~(masks["tp"] | masks["tn"]) if select == "errors" else masks[select]
            frame = frame[keep]
        # evaluate's `file` is relative to its data folder; predict's is the path it was given; either
        # may carry hashed DICOM UIDs (public_path), found again among the files under `data`
        hashed = {public_path(Path(p).relative_to(data).as_posix()): p for p in expand_inputs(data)} \
            if data.is_dir() else {}
        paths = [str(data / f) if (data / f).exists() else hashed.get(f) or str(f) for f in frame["file"]]
    else:
        if select != "all":
            raise ConfigError("--select needs --predictions CSV (with label and predicted columns)")
        paths = expand_inputs(data)
    samples = validate(Samples(paths, [0] * len(paths), str(data)), on_bad_file, frame=model.config.data.frame,
                       min_side=model.config.data.min_side)
    for path, reason in samples.skipped:
        log(f"skipped {public_path(path)}: {reason}")
    paths = samples.paths
    if sample and sample < len(paths):
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), sample, replace=False))
        paths = [paths[i] for i in keep]
    return paths
