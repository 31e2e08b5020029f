"""`vfa evaluate` on a per-vertebra model: every image read body by body, image-level metrics
from that reading, and, where a per-vertebra truth table exists (vfa synth writes vertebrae.csv),
detection, level, landmark, height-ratio, fracture, grade and shape metrics with bootstrap CIs.

Outputs: metrics.json (image-level keys as an image-level evaluation's, plus "vertebrae"),
predictions.csv (one row per image), vertebrae.csv (one row per body found), vertebra_matches.csv
(one row per true body: found, level, error, reading), overlays/, vertebra_report.md and
vertebra_report.html.
"""
from __future__ import annotations

import base64
import contextlib
import html
from pathlib import Path

import numpy as np
import pandas as pd

from vfa.config import ConfigError
from vfa.data.samples import DataError, load_samples, validate, write_skipped
from vfa.data.transforms import create_transform
from vfa.data.vertebrae import find_table, read_vertebrae, truth_for
from vfa.evaluation import report as report_mod
from vfa.evaluation.scores import score_metrics
from vfa.evaluation.vertebra_metrics import bootstrap, image_auc, match_image, table_lines
from vfa.explain.outlines import draw_spine, png
from vfa.inference.dicom_results import for_evaluate
from vfa.inference.vertebra import image_rows, read_spines
from vfa.io.identifiers import public_path
from vfa.models.loading import load_model
from vfa.stats.accuracy import parse_threshold
from vfa.runs import atomic_write, json_safe, lock, prepare_run_dir, write_json

READING = {"fracture": "the morphometry rules' grade >= 1, or the fracture head's P >= vertebra.fracture_threshold "
                       "(grade_source: rules or head)",
           "grade_and_type": "the morphometry rules (vfa.stats.morphometry) on the predicted six points; grade 1 "
                             "for a body only the head calls; the shape is the lowest ratio's",
           "p_fracture": "the landmark network's fracture head, per body",
           "image_p_fracture": "the largest P(fracture) of the image's bodies (0 when none was found)"}


def evaluate_vertebrae(model_path, data, out, metrics_name: str = "metrics.json", threshold="0.5",
                       threshold_from=None, tta: int = 0, split: str | None = None, on_bad_file: str = "error", batch_size: int = 8, force: bool = False,
                       progress: bool = True, log=print, table: str | Path | None = None, overlays: int = 8,
                       keep_identifiers: bool = False, device: str = "auto", dicom_out=None) -> dict:
    """Long: one pass that reads, scores, matches and writes; its steps are the functions it calls.
    Returns metrics.json's dict. `table`: the per-vertebra truth (default: vertebrae.csv beside
    `data`; without one, only image-level metrics). TTA and a data-driven threshold are refused."""
    kind, threshold = parse_threshold(threshold)
    if kind != "fixed" or threshold_from or tta:
        raise ConfigError("a per-vertebra model takes a numeric --threshold, without --threshold-from or --tta")
    model = load_model(model_path, device)
    cfg = model.config
    samples = validate(load_samples(data, cfg.data.classes, split=split), on_bad_file, frame=cfg.data.frame,
                       min_side=cfg.data.min_side)
    if not samples.paths:
        raise DataError(f"{data}: no usable images")
    try:
        truth = truth_for(samples, read_vertebrae(find_table(data, table)), "evaluation")
    except DataError as exc:
        if table:
            raise
        truth = None
        log(f"no per-vertebra metrics: {exc}")
    dicom = for_evaluate(dicom_out, samples, force, [model_path, data])  # SR + SC: checked before any reading
    out, standalone = Path(out), metrics_name == "metrics.json"
    prefix = metrics_name.replace("metrics.json", "")
    with lock(out) if standalone else contextlib.nullcontext():
        if standalone:
            prepare_run_dir(out, force, [model_path, data, table], "evaluate")
        write_skipped(samples, out / f"{prefix}skipped.csv", keep_identifiers)
        spines = read_spines(model, samples.paths, batch_size, progress)
        ids = [i if keep_identifiers else public_path(i) for i in samples.ids()]
        frame = pd.concat([pd.DataFrame({"file": ids, "label": samples.labels}), image_rows(spines)], axis=1)
        frame["predicted"] = (frame["p_fracture"] >= threshold).astype(int)
        result = {"family": "vertebra", "reading": READING, "threshold": threshold,
                  **score_metrics(frame["label"].to_numpy(), frame["p_fracture"].to_numpy(), threshold)}
        vert = pd.concat([s.assign(file=ids[i]) for i, s in enumerate(spines)], ignore_index=True)
        atomic_write(out / f"{prefix}vertebrae.csv", vert.to_csv(index=False, float_format="%.3f"))
        atomic_write(out / f"{prefix}predictions.csv", frame.to_csv(index=False))
        if truth is not None:
            bodies = pd.concat([match_image(i, truth[p], spines[i]) for i, p in enumerate(samples.paths)],
                               ignore_index=True)
            result["vertebrae"] = bootstrap(bodies)
            result["vertebrae"]["image_auc"] = image_auc(frame["label"], frame["p_fracture"])
            atomic_write(out / f"{prefix}vertebra_matches.csv",
                         bodies.assign(file=[ids[i] for i in bodies["image"]]).drop(columns="image").to_csv(
                             index=False, float_format="%.4f"))
            lines = table_lines(result["vertebrae"], result["vertebrae"]["image_auc"])
            atomic_write(out / f"{prefix}vertebra_report.md", _report(result, lines, data))
            drawn = _overlays(model, samples, spines, frame, out / "overlays", overlays, ids) \
                if standalone and overlays else []
            atomic_write(out / f"{prefix}vertebra_report.html", _html(result, lines, data, drawn))
            for line in lines:
                log(line)
        write_json(out / metrics_name, json_safe(result))
        if truth is None and standalone and overlays:
            _overlays(model, samples, spines, frame, out / "overlays", overlays, ids)
        if dicom:
            dicom(frame, model, threshold, "p_fracture", 0, keep_identifiers, out / f"{prefix}predictions.csv",
                  paths=[model_path])
    log(f"{data}: image-level AUC {result['auc']:.4f} (per-vertebra reading, n={len(frame)})")
    return result


def _report(result: dict, lines: list[str], data) -> str:
    n = result["vertebrae"]["n"]
    head = [f"# Per-vertebra evaluation on {public_path(str(data))}", "",
            f"{n['images']} images, {n['vertebrae']} vertebrae, {n['fractured']} fractured (grade 1: {n['grade1']}, "
            f"grade 2: {n['grade2']}, grade 3: {n['grade3']}). CIs: 95 %, bootstrap over images.", ""]
    how = ["", *(f"- {k.replace('_', ' ')}: {v}" for k, v in READING.items())]
    return "\n".join(head + lines + how) + "\n"


def _html(result: dict, lines: list[str], data, drawn: list[tuple[str, bytes]]) -> str:
    """vertebra_report.html: the table, how each call is made, and the overlays, in one file."""
    e = html.escape
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    table = pd.DataFrame(rows, columns=["metric", "value", "95 % CI", "goal"]).to_html(index=False)
    n = result["vertebrae"]["n"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>vfa per-vertebra evaluation</title>"
             f"<style>{report_mod.CSS}</style></head><body><h1>Per-vertebra evaluation</h1>",
             f"<p>{e(public_path(str(data)))}: {n['images']} images, {n['vertebrae']} vertebrae, {n['fractured']} "
             f"fractured (grade 1/2/3: {n['grade1']}/{n['grade2']}/{n['grade3']}). 95 % CIs: bootstrap over images; "
             f"image AUC: DeLong.</p>", table, "<h2>Who makes each call</h2><ul>",
             *(f"<li>{e(k.replace('_', ' '))}: {e(v)}</li>" for k, v in READING.items()), "</ul>"]
    for name, picture in drawn:
        parts.append(f"<h3>{e(name)}</h3><img alt='{e(name)}' src='data:image/png;base64,"
                     f"{base64.b64encode(picture).decode('ascii')}'>")
    return "\n".join(parts + ["</body></html>"])


def _overlays(model, samples, spines, frame, folder: Path, k: int, ids) -> list[tuple[str, bytes]]:
    """Up to k overlays: the most likely fractured images first, then the least likely; returns
    (name, PNG) of each."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.argsort(-frame["p_fracture"].to_numpy(), kind="stable")
    pick = list(order[: k - k // 4]) + list(order[::-1][: k // 4])
    transform = create_transform(model.config, channels=1)
    drawn = []
    for i in dict.fromkeys(pick):
        name = Path(ids[i]).with_suffix("").as_posix().replace("/", "__") + ".png"
        picture = png(draw_spine(transform.read(samples.paths[i]), spines[i]))
        atomic_write(folder / name, picture)
        drawn.append((name, picture))
    return drawn
