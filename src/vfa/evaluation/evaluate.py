"""Evaluate a checkpoint on a labelled class-folder set: metrics with 95 % CIs, calibration, TTA,
predictions.csv, metrics.json and (standalone) the notebook's Excel/.npy set, figures, report.html.
(`vfa.evaluation.compare`: two prediction CSVs, paired; `vfa.evaluation.calibrate`: temperature and threshold.)
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd

from vfa.config import ConfigError
from vfa.data.stream import default_workers
from vfa.data.samples import DataError, load_samples, validate, write_skipped
from vfa.evaluation import report as report_mod
from vfa.explain import cam
from vfa.explain.localization import find_manifest, read_manifest, summarize
from vfa.explain.render import gallery_png, select_gallery
from vfa.inference.dicom_results import for_evaluate
from vfa.inference.engine import Scorer, score_paths
from vfa.inference.ensemble import load_ensemble, resolve_family
from vfa.inference.tta import tta_name
from vfa.inference.predict import SCORES, check_run_args, image_ids, read_predictions  # noqa: F401
from vfa.io.identifiers import public_path
from vfa.runs import atomic_write, json_safe, lock, prepare_run_dir, write_json
from vfa.stats import accuracy as stats
from vfa.evaluation.breakdown import breakdown, groups_of
from vfa.evaluation.scores import labelled_frame, score_metrics
from vfa.stats.metrics import SCALAR_KEYS, format_line


def resolve_thresholds(spec, scores: list[str], model, frame: pd.DataFrame,
                       threshold_from: str | Path | None) -> tuple[dict, str]:
    """Per-score thresholds and a sentence saying where they came from."""
    try:
        kind, value = stats.parse_threshold(spec)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if kind in ("fixed", "model") and threshold_from:
        raise ConfigError(f"--threshold-from needs a data-driven threshold (youden, sensitivity=X, "
                          f"specificity=X), not {spec!r}")
    if kind == "fixed":
        return {s: value for s in scores}, ("fixed at 0.5, as the notebook" if value == 0.5 else f"fixed at {value}")
    if kind == "model":
        return {s: model.threshold for s in scores}, f"stored in the model ({model.threshold_source})"
    ref, where = (read_predictions(threshold_from), f"validation predictions {threshold_from}") if threshold_from \
        else (frame, "this evaluation set itself (optimistic; choose on validation with --threshold-from)")
    out = {}
    for s in scores:
        if s not in ref:
            raise ConfigError(f"{threshold_from}: no '{s}' column; evaluate the validation set with the same --tta")
        try:
            out[s] = stats.choose_threshold(ref["label"], ref[s], spec)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return out, f"{spec} on {where} (n={len(ref)}), per score"


def evaluate(model_path: str | Path, data: str | Path, out: str | Path, metrics_name: str = "metrics.json",
             threshold: float | str = 0.5, threshold_from: str | Path | None = None, tta: int = 0,
             tta_preset: str = "auto", seed: int = 0, score: str = "raw", id_regex: str | None = None,
             id_column: str | None = None, split: str | None = None,
             report: bool | None = None, on_bad_file: str = "error", batch_size: int = 16,
             num_workers: int | None = None,
             force: bool = False, progress: bool = True, log=print, manifest: str | Path | None = None,
             gallery: int = 4, cam_method: str | None = None, backend: str = "auto",
             device: str = "auto", keep_identifiers: bool = False, dicom_out=None) -> dict:
    """Metrics of `model_path` on the class folders in `data`, written to `out`; returns metrics.json's dict.

    The flat keys (auc, sn, ..., n) are those of `score`; every score's metrics are under "scores".
    `report` (default: only when standalone, metrics_name == "metrics.json") adds the Excel
    workbook, the notebook's .npy set, the figures and report.html, with a heatmap gallery of up
    to `gallery` true positives, false positives and false negatives each (0: none).
    Where fractured-vertebra boxes exist (`manifest`, or a phantom's manifest.csv found in `data`
    or its parent), metrics.json gets "localization": the pointing game and box mass of the model's CAM method.
    `device`: auto (the GPU when there is one), cpu, cuda, cuda:N or mps. DICOM UIDs in file names
    are replaced by a hash in every output unless `keep_identifiers`.
    """
    options = dict(locals())  # every option, passed on to the family's evaluate step
    check_run_args(batch_size=batch_size, tta=tta, num_workers=num_workers or 0)
    if score not in SCORES or (score != "raw" and not tta):
        raise ConfigError(f"--score must be one of {', '.join(SCORES)} (tta_* need --tta N), got {score!r}")
    try:  # fail on a bad option before any image is read
        stats.parse_threshold(threshold)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    family = resolve_family(model_path, "evaluate")
    family.refuse("evaluate", tta=tta, threshold_from=threshold_from, score=score, backend=backend,
                  boxes=manifest, method=cam_method)
    return family.step("evaluate")(**options)


def evaluate_images(model_path, data, out, metrics_name="metrics.json", threshold=0.5, threshold_from=None, tta=0,
                    tta_preset="auto", seed=0, score="raw", id_regex=None, id_column=None, split=None, report=None,
                    on_bad_file="error", batch_size=16, num_workers=None, force=False, progress=True, log=print,
                    manifest=None, gallery=4, cam_method=None, backend="auto", device="auto", keep_identifiers=False,
                    dicom_out=None) -> dict:
    """The image family's evaluate step (`evaluate`, options checked there)."""
    models = [model_path] if isinstance(model_path, str | Path) else list(model_path)
    public = str if keep_identifiers else public_path
    model = load_ensemble(model_path, device)  # one checkpoint, several, or an ensemble file
    tta_used = tta_name(tta_preset, model.members)  # (an unknown name fails here, before any image is read)
    cfg = model.config
    # a class folder or a manifest (split: the rows of that split; id_column: image IDs from it)
    samples = validate(load_samples(data, cfg.data.classes, split=split, id_column=id_column), on_bad_file,
                       frame=cfg.data.frame, min_side=cfg.data.min_side)
    if not samples.paths:
        raise DataError(f"{data}: no usable images under {'/'.join(cfg.data.classes)}")
    dicom = for_evaluate(dicom_out, samples, force, [*models, data])  # DICOM SR + SC: checked before scoring
    out, standalone = Path(out), metrics_name == "metrics.json"
    report = standalone if report is None else report
    with lock(out) if standalone else contextlib.nullcontext():  # one writer per output folder
        if standalone:
            prepare_run_dir(out, force, [*models, data, manifest, threshold_from], "evaluate")
        write_skipped(samples, out / metrics_name.replace("metrics.json", "skipped.csv"),
                      keep_identifiers)
        num_workers = default_workers(len(samples.paths), batch_size) if num_workers is None else num_workers
        frame, backend = predictions_frame(model, samples, tta, tta_preset, seed, batch_size, num_workers, progress,
                                           backend, id_regex, id_column, keep_identifiers, log)  # Grad-CAM: fp32
        checks = frame.attrs.get("backend_checks", [])
        if frame["image_id"].duplicated().any():
            log(f"warning: {frame['image_id'].duplicated().sum()} duplicate image IDs (check --id-regex)")
        scores = [s for s in SCORES if s in frame]
        thresholds, source = resolve_thresholds(threshold, scores, model, frame, threshold_from)
        frame["predicted"] = (frame[score] >= thresholds[score]).astype(int)
        result = metrics_dict(frame, score, thresholds, source)
        result.update({"tta": {"n": tta, "preset": tta_used, "seed": seed}, "temperature": model.temperature,
                       "backend": backend, "backend_checks": checks, "data": public(str(data)),
                       "model": public(str(models[0])) if len(models) == 1 else [public(str(m)) for m in models],
                       "skipped": len(samples.skipped), "id_regex": id_regex})
        result = _ordered(result)
        groups = groups_of(samples.paths, data)   # a manifest's vendor column: metrics per vendor
        if groups:
            result["breakdown"] = breakdown(frame["label"], frame[score], thresholds[score], groups)
        boxes_file = manifest or find_manifest(data)
        boxes = read_manifest(boxes_file) if boxes_file else None
        cam_method, cam_layer = cam.cam_settings(model, cam_method)  # None: the model's own (cpu-demo: LayerCAM)
        if boxes:
            fractured = [p for p, y in zip(samples.paths, frame["label"]) if y == 1]
            result["localization"] = localization(model, fractured, boxes, boxes_file, cam_method, cam_layer,
                                                  min(batch_size, 8), log)
        safe = json_safe(result)
        write_json(out / metrics_name, safe)
        atomic_write(out / metrics_name.replace("metrics.json", "predictions.csv"), frame.to_csv(index=False))
        if dicom:
            dicom(frame, model, thresholds[score], score, tta, keep_identifiers, out / "predictions.csv")
        if report:
            _write_report(out, model, frame, result, thresholds, samples, gallery, boxes, cam_method, cam_layer)
        for s in scores:
            md = result["scores"][s]
            log(f"{data} [{s}]: {format_line(md)}  (n={md['n']}, threshold {md['threshold']:.4g})"
                + (f"  [{'; '.join(md['notes'])}]" if md["notes"] else ""))
        for column, rows in result.get("breakdown", {}).items():
            for name, g in rows.items():
                log(f"  {column} {name} [{score}]: AUC {_num(g['auc'])} (95% CI {_num(g['auc_ci'][0])}-"
                    f"{_num(g['auc_ci'][1])}), Sn {_num(g['sensitivity'])}, Sp {_num(g['specificity'])} (n={g['n']})")
    return safe


def _num(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


def predictions_frame(model, samples, tta: int, tta_preset: str, seed: int, batch_size: int, num_workers: int,
                      progress: bool, backend: str, id_regex: str | None, id_column: str | None,
                      keep_identifiers: bool = False, log=None) -> tuple[pd.DataFrame, str]:
    """(image_id, file, label, raw (and tta_mean, tta_max; each member's with an ensemble) for
    labelled `samples`, the backend used); DICOM UIDs in file names are hashed unless `keep_identifiers`.
    frame.attrs["backend_checks"]: per member, what ran and auto's check. `log`: auto's fallback line."""
    scorer = Scorer(model, backend, len(samples.paths), samples.paths, tta, tta_preset, seed, log=log)
    rows, late = score_paths(scorer, samples.paths, batch_size, num_workers, progress)
    if late:
        raise DataError(f"{len(late)} file(s) changed while being evaluated, e.g. {late[0][1]}: {late[0][2]}")
    frame = labelled_frame(samples, id_regex, id_column, keep_identifiers)
    # float64 throughout, so `p >= threshold` is the same in memory, in the CSV and in metrics
    for col in [c for c in rows.columns if c.startswith(SCORES)]:
        frame[col] = rows[col].to_numpy(np.float64)
    frame.attrs["backend_checks"] = scorer.checks
    return frame, scorer.backend


def metrics_dict(frame: pd.DataFrame, score: str, thresholds: dict, source: str) -> dict:
    """metrics.json's metric keys: the primary score's flat, every score's under "scores"."""
    y = frame["label"].to_numpy()
    scores = list(thresholds)
    per_score = {s: score_metrics(y, frame[s].to_numpy(), thresholds[s]) for s in scores}
    grid = sorted(set(np.round(np.arange(0.05, 0.951, 0.05), 2).tolist()) | set(thresholds.values()))
    primary = per_score[score]
    return {**{k: primary[k] for k in SCALAR_KEYS}, "threshold": thresholds[score],
            **{k: v for k, v in primary.items() if k.endswith(("_ci", "_se")) or k in ("brier", "ece")},
            "notes": primary["notes"], "score": score, "threshold_source": source,
            "n_norm": int((y == 0).sum()), "n_frac": int((y == 1).sum()), "scores": per_score,
            "operating_points": {s: stats.operating_points(y, frame[s].to_numpy(), grid) for s in scores}}


# metrics.json's key order, kept as it was written before the split into functions
_ORDER = ("tta", "temperature", "backend", "backend_checks", "model", "data", "n_norm", "n_frac", "skipped",
          "id_regex", "scores", "operating_points")


def _ordered(result: dict) -> dict:
    head = {k: v for k, v in result.items() if k not in _ORDER}
    return {**head, **{k: result[k] for k in _ORDER}}


def localization(model, fractured: list[str], boxes: dict, boxes_file, method: str, layer: str,
                 batch_size: int, log=print) -> dict:
    """The CAM method's pointing game and box mass over the fractured images that have boxes."""
    rows = cam.localization_rows(model, fractured, boxes, method, layer, batch_size=batch_size)
    loc = {**summarize(rows), "manifest": str(boxes_file), "method": method, "layer": layer,
           "output_stride": cam.cam_network(cam.members_of(model)[0], None, layer)[1]}
    log(f"{cam.METHOD_NAMES[method]} pointing game {loc['pointing_game']:.3f} (95% CI {loc['pointing_game_ci'][0]:.3f}-"
        f"{loc['pointing_game_ci'][1]:.3f}, n={loc['n_fractured']}; within 15 px "
        f"{loc['pointing_game_tol15px']:.3f}), heatmap mass in boxes "
        f"{loc['mass_in_boxes']:.3f}" if loc["n_fractured"] else "localization: no fractured image has boxes")
    return loc


def _write_report(out: Path, model, frame, result: dict, thresholds: dict, samples, gallery: int, boxes,
                  cam_method: str, cam_layer: str) -> None:
    tta, score = result["tta"], result["score"]
    info = {"model": result["model"], "data": result["data"], "images": f"{len(frame)} ({result['n_norm']} norm, "
            f"{result['n_frac']} frac)", "skipped files": len(samples.skipped), "primary score": score,
            "threshold": ", ".join(f"{s} {t:.4g}" for s, t in thresholds.items()),
            "threshold source": result["threshold_source"], "temperature": model.temperature,
            "TTA": f"{tta['n']} passes, preset {tta['preset']}, seed {tta['seed']}" if tta["n"] else "off",
            "image IDs": f"regex {result['id_regex']}" if result["id_regex"] else "path relative to the data folder"}
    picks = select_gallery(frame, score, gallery) if gallery > 0 else {}
    png = gallery_png(model, {k: [samples.paths[i] for i in v] for k, v in picks.items()},
                      boxes, cam_method, cam_layer) if picks else None
    report_mod.write_all(out, frame, result, info, gallery=png)
