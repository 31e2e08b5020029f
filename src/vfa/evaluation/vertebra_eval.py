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
from vfa.data.vertebrae import find_table, read_vertebrae, truth_for, vendors_of
from vfa.evaluation import report as report_mod
from vfa.evaluation.scores import labelled_frame, score_metrics
from vfa.evaluation.vertebra_metrics import (CI_NOTE, bootstrap, describe_image, image_auc, match_image, table_lines,
                                             table_rows)
from vfa.explain.outlines import draw_spine, png
from vfa.inference.dicom_results import for_evaluate
from vfa.inference.vertebra import image_rows, read_spines
from vfa.inference.vertebra_predict import reading_threshold
from vfa.io.identifiers import public_path
from vfa.inference.ensemble import load_ensemble
from vfa.stats.accuracy import parse_threshold
from vfa.runs import atomic_write, json_safe, lock, prepare_run_dir, write_json

# who makes each call, per vertebra.grading (metrics.json's "reading", the reports' "Who makes each call")
GRADING = {
    "rules": {"fracture": "the morphometry rules' grade >= 1, or the fracture head's P >= vertebra.fracture_threshold "
                          "(grade_source: rules or head)",
              "grade_and_type": "the morphometry rules (vfa.stats.morphometry) on the predicted six points; grade 1 "
                                "for a body only the head calls; the shape is the lowest ratio's"},
    "head": {"fracture": "the learned grade (vertebra.grading=head): the fracture head's P = P(grade >= 1) >= "
                         "vertebra.fracture_threshold (grade_source: head)",
             "grade_and_type": "the learned grade: 1, plus 1 for each of the severity head's P(grade >= 2) and "
                               "P(grade >= 3) >= 0.5 in turn; the shape is the morphometry rules' lowest ratio on "
                               "the predicted six points (their grade is not used)"},
}
READING = {"p_fracture": "the landmark network's fracture head, per body",
           "image_score": "raw: the highest body score, P(fracture) for a body the rules leave at grade 0 and "
                          "threshold + (1 - threshold) P for a body the rules grade (0 when no body was found)",
           "image_call": "predicted: a body is fractured (raw >= threshold, the same as max_grade >= 1)",
           "evaluable": "the landmark network's readability head: P(readable) < 0.5 reports the body not "
                        "evaluable (no grade, type or P(fracture); no part in the image's call); a checkpoint "
                        "without the head reads every body evaluable"}


PRIOR = {"balanced": "as trained (vertebra.fracture_prior=balanced: with class weights, 0.5 is the balanced "
                     "operating point)",
         "training": "corrected to the training set's share of fractured bodies (vertebra.fracture_prior="
                     "training: the logit less log(pos_weight))"}


def reading(grading: str, prior: str = "balanced") -> dict:
    """How a model with this vertebra.grading and fracture_prior makes each call, in words."""
    return {"grading": grading, **GRADING[grading], **READING,
            "p_fracture": f"{READING['p_fracture']}, {PRIOR[prior]}"}


def evaluate_vertebrae(model_path, data, out, metrics_name: str = "metrics.json", threshold="0.5", split=None,
                       on_bad_file: str = "error", batch_size: int = 8, force: bool = False, progress: bool = True,
                       log=print, keep_identifiers: bool = False, device: str = "auto", dicom_out=None,
                       id_regex=None, id_column=None, table=None, overlays: int = 8, **refused) -> dict:
    """The per-vertebra family's evaluate step: returns metrics.json's dict. `table`: the
    per-vertebra truth (default: vertebrae.csv beside `data`; without one, only image-level
    metrics). `refused`: the image family's options (tta, threshold_from, ...), which `evaluate`
    refuses when set (vfa.registry.FAMILIES); here they are at their defaults."""
    kind, value = parse_threshold(threshold)
    if kind not in ("fixed", "model"):
        raise ConfigError("a per-vertebra model takes a numeric --threshold (the fracture head's, "
                          "vertebra.fracture_threshold) or model, not a rule fitted to this data")
    ens = load_ensemble(model_path, device)  # one checkpoint (given alone, in a list or an ensemble file)
    model, model_path = ens.single, ens.paths[0]
    threshold = reading_threshold(model, "model" if kind == "model" else value)
    cfg = model.config
    samples = validate(load_samples(data, cfg.data.classes, split=split, id_column=id_column), on_bad_file,
                       frame=cfg.data.frame, min_side=cfg.data.min_side)
    if not samples.paths:
        raise DataError(f"{data}: no usable images")
    truth = _truth(samples, data, table, log)
    dicom = for_evaluate(dicom_out, samples, force, [model_path, data])  # SR + SC: checked before any reading
    out, standalone = Path(out), metrics_name == "metrics.json"
    prefix = metrics_name.replace("metrics.json", "")
    with lock(out) if standalone else contextlib.nullcontext():
        if standalone:
            prepare_run_dir(out, force, [model_path, data, table], "evaluate")
        write_skipped(samples, out / f"{prefix}skipped.csv", keep_identifiers)
        spines = read_spines(model, samples.paths, batch_size, progress)
        frame = pd.concat([labelled_frame(samples, id_regex, id_column, keep_identifiers),
                           image_rows(spines, threshold)], axis=1)
        how = reading(cfg.vertebra.grading, cfg.vertebra.fracture_prior)
        result = {"family": "vertebra", "reading": how, "threshold": threshold,
                  **score_metrics(frame["label"].to_numpy(), frame["raw"].to_numpy(), threshold)}
        ids = frame["file"].tolist()
        vert = pd.concat([v.assign(file=ids[i]) for i, v in enumerate(spines)], ignore_index=True)
        atomic_write(out / f"{prefix}vertebrae.csv", vert.to_csv(index=False, float_format="%.3f"))
        atomic_write(out / f"{prefix}predictions.csv", frame.to_csv(index=False))
        bodies = None if truth is None else _bodies(samples, truth, spines, data)
        drawn = _overlays(model, samples, spines, frame, out / "overlays", overlays, bodies) \
            if standalone and overlays else []
        if truth is not None:
            _vertebra_metrics(result, bodies, frame, out, prefix, data, drawn, log)
        write_json(out / metrics_name, json_safe(result))
        if dicom:
            dicom(frame, model, threshold, "raw", 0, keep_identifiers, out / f"{prefix}predictions.csv",
                  paths=[model_path])
    log(f"{data}: image-level AUC {result['auc']:.4f} (per-vertebra reading, n={len(frame)})")
    return result


def _truth(samples, data, table, log) -> dict | None:
    """The per-vertebra truth of `samples`, or None (logged) when `data` has no table and none was given."""
    try:
        return truth_for(samples, read_vertebrae(find_table(data, table)), "evaluation")
    except DataError as exc:
        if table:
            raise
        log(f"no per-vertebra metrics: {exc}")
        return None


def _bodies(samples, truth: dict, spines: list[pd.DataFrame], data) -> pd.DataFrame:
    """The true bodies matched to the reading (match_image), with each image's `vendor` where the
    manifest beside `data` has one (for the breakdown)."""
    bodies = pd.concat([match_image(i, truth[p], spines[i]) for i, p in enumerate(samples.paths)], ignore_index=True)
    vendors = vendors_of(samples, data)
    if vendors is not None:
        bodies["vendor"] = [vendors[i] or "unknown" for i in bodies["image"]]
    return bodies


def _vertebra_metrics(result, bodies: pd.DataFrame, frame, out: Path, prefix: str, data, drawn, log) -> None:
    """result["vertebrae"] of the bodies matched to the truth (Wilson and bootstrap CIs), the matches,
    and the markdown and HTML reports."""
    ids = frame["file"].tolist()
    result["vertebrae"] = bootstrap(bodies)
    result["vertebrae"]["image_auc"] = image_auc(frame["label"], frame["raw"])
    # a body read not evaluable has no grade read: empty, not the 0 the metrics leave it out with
    shown = bodies.assign(file=[ids[i] for i in bodies["image"]],
                          pred_grade=bodies["pred_grade"].astype("Int64").where(bodies["pred_evaluable"]),
                          pred_evaluable=bodies["pred_evaluable"].astype(int))
    atomic_write(out / f"{prefix}vertebra_matches.csv",
                 shown.drop(columns="image").to_csv(index=False, float_format="%.4f"))
    lines = table_lines(result["vertebrae"], result["vertebrae"]["image_auc"])
    atomic_write(out / f"{prefix}vertebra_report.md", _report(result, lines, data, drawn))
    atomic_write(out / f"{prefix}vertebra_report.html", _html(result, data, drawn))
    for line in lines:
        log(line)


def _report(result: dict, lines: list[str], data, drawn: list[dict]) -> str:
    n = result["vertebrae"]["n"]
    head = [f"# Per-vertebra evaluation on {public_path(str(data))}", "",
            f"{n['images']} images, {n['vertebrae']} vertebrae, {n['fractured']} fractured (grade 1: {n['grade1']}, "
            f"grade 2: {n['grade2']}, grade 3: {n['grade3']}){_unread(n)}.", "", CI_NOTE, ""]
    how = ["", "## Who makes each call", "", *(f"- {k.replace('_', ' ')}: {v}" for k, v in result["reading"].items())]
    examples = ["", "## Examples (overlays/)", "", *(f"- {d['name']}: {d['chosen']}. {d['caption']}." for d in drawn)]
    return "\n".join(head + lines + how + (examples if drawn else [])) + "\n"


def _unread(n: dict) -> str:
    """The counts' note on readability, empty when the truth marks none unreadable and none was called so."""
    if not n.get("unreadable") and not n.get("not_evaluable_calls"):
        return ""
    return (f"; {n.get('unreadable', 0)} unreadable in the truth (not scored), {n.get('not_evaluable_calls', 0)} "
            f"called not evaluable by the reader")


def _html(result: dict, data, drawn: list[dict]) -> str:
    """vertebra_report.html: the table (goals not met marked), how each call is made, and the overlays,
    each with why it was chosen and what it gets wrong, in one file."""
    e = html.escape
    rows = table_rows(result["vertebrae"], result["vertebrae"]["image_auc"])
    cells = [[e(r["metric"]), e(r["value"]), e(r["ci"]), e(r["method"]),
              e(r["goal"]) + (" <b class='note'>not met</b>" if r["met"] is False else "")] for r in rows]
    table = pd.DataFrame(cells, columns=["metric", "value", "95 % CI", "CI", "goal"]).to_html(index=False,
                                                                                            escape=False)
    n = result["vertebrae"]["n"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>vfa per-vertebra evaluation</title>"
             f"<style>{report_mod.CSS}</style></head><body><h1>Per-vertebra evaluation</h1>",
             f"<p>{e(public_path(str(data)))}: {n['images']} images, {n['vertebrae']} vertebrae, {n['fractured']} "
             f"fractured (grade 1/2/3: {n['grade1']}/{n['grade2']}/{n['grade3']}){e(_unread(n))}.</p>"
             f"<p>{e(CI_NOTE)}</p>", table,
             "<h2>Who makes each call</h2><ul>",
             *(f"<li>{e(k.replace('_', ' '))}: {e(v)}</li>" for k, v in result["reading"].items()), "</ul>"]
    if drawn:
        parts.append("<h2>Examples</h2><p>Outlines and labels are the model's reading; the caption compares it "
                     "with the truth.</p>")
    for d in drawn:
        parts.append(f"<figure><img alt='{e(d['name'])}' src='data:image/png;base64,"
                     f"{base64.b64encode(d['png']).decode('ascii')}'><figcaption><b>{e(d['name'])}</b>: "
                     f"{e(d['chosen'])}.<br>{e(d['caption'])}.</figcaption></figure>")
    return "\n".join(parts + ["</body></html>"])


def _examples(frame: pd.DataFrame, k: int) -> dict[int, str]:
    """Up to k images to draw, {row: why}: the highest image scores first, then (a quarter) the lowest."""
    raw = frame["raw"].to_numpy(dtype=float)
    order, n = np.argsort(-raw, kind="stable"), len(raw)
    top, bottom = order[: k - k // 4], order[::-1][: k // 4]
    picks = [(i, f"highest image score, #{r + 1} of {n} (raw {raw[i]:.3f})") for r, i in enumerate(top)]
    picks += [(i, f"lowest image score, #{n - r} of {n} (raw {raw[i]:.3f})") for r, i in enumerate(bottom)]
    chosen: dict[int, str] = {}
    for i, why in picks:
        chosen.setdefault(int(i), why)
    return chosen


def _overlays(model, samples, spines, frame, folder: Path, k: int, bodies) -> list[dict]:
    """Up to k overlays (_examples); returns {name, png, chosen, caption} of each, also listed in
    overlays/examples.csv. The caption: the truth and the call, and, with a per-vertebra truth
    (`bodies`), what the reading got wrong (vertebra_metrics.describe_image)."""
    folder.mkdir(parents=True, exist_ok=True)
    transform = create_transform(model.config, channels=1)
    ids, drawn = frame["file"].tolist(), []
    for i, why in _examples(frame, k).items():
        name = Path(ids[i]).with_suffix("").as_posix().replace("/", "__") + ".png"
        picture = png(draw_spine(transform.read(samples.paths[i]), spines[i]))
        atomic_write(folder / name, picture)
        truth = {1: "fractured", 0: "not fractured"}.get(frame["label"].iloc[i], "no label")
        caption = f"truth: {truth}; read: {'fractured' if frame['predicted'].iloc[i] else 'not fractured'}"
        if bodies is not None:
            caption += "; " + describe_image(bodies[bodies["image"] == i], len(spines[i]))
        drawn.append({"name": name, "png": picture, "chosen": why, "caption": caption})
    atomic_write(folder / "examples.csv", pd.DataFrame(drawn).drop(columns="png").to_csv(index=False))
    return drawn
