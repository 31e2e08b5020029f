"""Evaluate a checkpoint on a labelled class-folder set: metrics with 95 % CIs, calibration, TTA,
predictions.csv, metrics.json and (standalone) the notebook's Excel/.npy set, figures, report.html.

Also `compare` (two prediction CSVs: paired DeLong, McNemar) and `read_predictions`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from vfa import stats
from vfa.config import ConfigError
from vfa.data import DataError, load_samples, validate, write_skipped
from vfa.metrics import SCALAR_KEYS, format_line, med_metrics, scalars
from vfa.predict import SCORES, eval_dataset, image_ids, load_model
from vfa.runs import atomic_write, prepare_run_dir


def json_safe(v):
    """NaN -> null, inf -> "inf", tuples/numpy -> plain JSON, recursively."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [json_safe(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return None if math.isnan(v) else ("inf" if v == math.inf else ("-inf" if v == -math.inf else v))
    return v


def score_metrics(y, p, threshold: float, n_bins: int = 10) -> dict:
    """`med_metrics` at `threshold` plus Wilson / log-method / DeLong 95 % CIs, Brier and ECE."""
    md = med_metrics(y, p, threshold, with_curve=False)
    m = {**scalars(md), "threshold": float(threshold)}
    tp, fp, fn, tn, n = m["tp"], m["fp"], m["fn"], m["tn"], m["n"]
    for key, k, total in (("sn", tp, tp + fn), ("sp", tn, tn + fp), ("ppv", tp, tp + fp),
                          ("npv", tn, tn + fn), ("acc", tp + tn, n)):
        m[f"{key}_ci"] = stats.wilson(k, total)
    lr = stats.likelihood_ratios(tp, fp, fn, tn)
    m["plr_ci"], m["nlr_ci"] = lr["plr_ci"], lr["nlr_ci"]
    dl = stats.delong_ci(y, p)
    m["auc_ci"], m["auc_se"] = dl["auc_ci"], dl["auc_se"]
    m.update(stats.calibration(y, p, n_bins))
    m["notes"] = list(dict.fromkeys(md["notes"] + lr["notes"] + dl["notes"]))
    return m


def read_predictions(path: str | Path, need_label: bool = True) -> pd.DataFrame:
    """A predictions CSV written by `vfa evaluate` (or `vfa predict`, which has no labels)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    frame = pd.read_csv(path).rename(columns={"p_fracture": "raw", "image": "image_id"})
    if need_label and "label" not in frame:
        raise ConfigError(f"{path}: no 'label' column (it must come from vfa evaluate on labelled data)")
    if "image_id" not in frame or not any(s in frame for s in SCORES):
        raise ConfigError(f"{path}: not a vfa predictions file (needs image_id and raw/tta_mean/tta_max)")
    return frame


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
             tta_preset: str = "tta", seed: int = 0, score: str = "raw", id_regex: str | None = None,
             id_column: str | None = None, split: str | None = None,
             report: bool | None = None, on_bad_file: str = "error", batch_size: int = 16, num_workers: int = 2,
             force: bool = False, progress: bool = True, log=print, manifest: str | Path | None = None,
             gallery: int = 4, cam_method: str | None = None, backend: str = "auto") -> dict:
    """Metrics of `model_path` on the class folders in `data`, written to `out`; returns metrics.json's dict.

    The flat keys (auc, sn, ..., n) are those of `score`; every score's metrics are under "scores".
    `report` (default: only when standalone, metrics_name == "metrics.json") adds the Excel
    workbook, the notebook's .npy set, the figures and report.html, with a heatmap gallery of up
    to `gallery` true positives, false positives and false negatives each (0: none).
    Where fractured-vertebra boxes exist (`manifest`, or a phantom's manifest.csv found in `data`
    or its parent), metrics.json gets "localization": the pointing game and box mass of the model's CAM method.
    """
    if tta < 0:
        raise ConfigError(f"--tta must be >= 0, got {tta}")
    if score not in SCORES or (score != "raw" and not tta):
        raise ConfigError(f"--score must be one of {', '.join(SCORES)} (tta_* need --tta N), got {score!r}")
    from vfa.augment import get_augment_config
    from vfa.tta import tta_predict

    try:  # fail on a bad option before any image is read
        stats.parse_threshold(threshold)
        get_augment_config(tta_preset)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    model = load_model(model_path)
    cfg = model.config
    # a class folder or a manifest (split: the rows of that split; id_column: image IDs from it)
    samples = validate(load_samples(data, cfg.data.classes, split=split, id_column=id_column), on_bad_file,
                       frame=cfg.data.frame)
    if not samples.paths:
        raise DataError(f"{data}: no usable images under {'/'.join(cfg.data.classes)}")
    out = Path(out)
    standalone = metrics_name == "metrics.json"
    report = standalone if report is None else report
    if standalone:
        prepare_run_dir(out, force)
    write_skipped(samples, out / ("skipped.csv" if standalone else metrics_name.replace("metrics.json", "skipped.csv")))
    loader = DataLoader(eval_dataset(model, samples.paths, samples.labels), batch_size=batch_size,
                        num_workers=num_workers)
    from vfa.inference import resolve_backend, with_backend

    backend = resolve_backend(backend, len(samples.paths) * (1 + tta))  # Grad-CAM below stays eager fp32
    res = tta_predict(with_backend(model, backend, calibration=samples.paths), loader, tta, tta_preset, seed,
                      progress=progress)
    root = Path(samples.root)
    frame = pd.DataFrame({"image_id": samples.ids() if id_column else image_ids(samples.rel_paths(), None, id_regex),
                          "file": samples.rel_paths(),
                          "label": np.asarray(samples.labels, dtype=int), "raw": res.raw.astype(np.float64)})
    if tta:  # float64 throughout, so `p >= threshold` is the same in memory, in the CSV and in metrics
        frame["tta_mean"], frame["tta_max"] = res.mean.astype(np.float64), res.max.astype(np.float64)
    if frame["image_id"].duplicated().any():
        log(f"warning: {frame['image_id'].duplicated().sum()} duplicate image IDs (check --id-regex)")
    scores = [s for s in SCORES if s in frame]
    thresholds, source = resolve_thresholds(threshold, scores, model, frame, threshold_from)
    y = frame["label"].to_numpy()
    per_score = {s: score_metrics(y, frame[s].to_numpy(), thresholds[s]) for s in scores}
    grid = sorted(set(np.round(np.arange(0.05, 0.951, 0.05), 2).tolist()) | set(thresholds.values()))
    frame["predicted"] = (frame[score] >= thresholds[score]).astype(int)
    primary = per_score[score]
    result = {**{k: primary[k] for k in SCALAR_KEYS}, "threshold": thresholds[score],
              **{k: v for k, v in primary.items() if k.endswith(("_ci", "_se")) or k in ("brier", "ece")},
              "notes": primary["notes"], "score": score, "threshold_source": source,
              "tta": {"n": tta, "preset": tta_preset, "seed": seed}, "temperature": model.temperature, "backend": backend,
              "model": str(model_path), "data": str(data), "n_norm": int((y == 0).sum()),
              "n_frac": int((y == 1).sum()), "skipped": len(samples.skipped), "id_regex": id_regex,
              "scores": per_score,
              "operating_points": {s: stats.operating_points(y, frame[s].to_numpy(), grid) for s in scores}}
    from vfa import cam

    manifest = manifest or cam.find_manifest(data)
    boxes = cam.read_manifest(manifest) if manifest else None
    cam_method, cam_layer = cam.cam_settings(model, cam_method)   # None: the model's own (cpu-demo: LayerCAM)
    if boxes:
        rows = cam.localization_rows(model, [str(root / f) for f in frame["file"][frame["label"] == 1]], boxes,
                                     cam_method, cam_layer, batch_size=min(batch_size, 8))
        result["localization"] = {**cam.summarize(rows), "manifest": str(manifest), "method": cam_method,
                                  "layer": cam_layer, "output_stride": cam.cam_network(model, None, cam_layer)[1]}
        loc = result["localization"]
        log(f"{cam.METHOD_NAMES[cam_method]} pointing game {loc['pointing_game']:.3f} (95% CI {loc['pointing_game_ci'][0]:.3f}-"
            f"{loc['pointing_game_ci'][1]:.3f}, n={loc['n_fractured']}; within 15 px "
            f"{loc['pointing_game_tol15px']:.3f}), heatmap mass in boxes "
            f"{loc['mass_in_boxes']:.3f}" if loc["n_fractured"] else "localization: no fractured image has boxes")
    safe = json_safe(result)
    atomic_write(out / metrics_name, json.dumps(safe, indent=2))
    atomic_write(out / metrics_name.replace("metrics.json", "predictions.csv"), frame.to_csv(index=False))
    if report:
        from vfa import report as report_mod

        info = {"model": str(model_path), "data": str(data), "images": f"{len(y)} ({result['n_norm']} norm, "
                f"{result['n_frac']} frac)", "skipped files": len(samples.skipped), "primary score": score,
                "threshold": ", ".join(f"{s} {t:.4g}" for s, t in thresholds.items()),
                "threshold source": source, "temperature": model.temperature,
                "TTA": f"{tta} passes, preset {tta_preset}, seed {seed}" if tta else "off",
                "image IDs": f"regex {id_regex}" if id_regex else "path relative to the data folder"}
        picks = cam.select_gallery(frame, score, gallery) if gallery > 0 else {}
        png = cam.gallery_png(model, {k: [str(root / frame["file"].iloc[i]) for i in v] for k, v in picks.items()},
                              boxes, cam_method, cam_layer) if picks else None
        report_mod.write_all(out, frame, result, info, gallery=png)
    for s in scores:
        md = per_score[s]
        log(f"{data} [{s}]: {format_line(md)}  (n={md['n']}, threshold {md['threshold']:.4g})"
            + (f"  [{'; '.join(md['notes'])}]" if md["notes"] else ""))
    return safe


def compare(a_csv: str | Path, b_csv: str | Path, score: str = "raw", score_b: str | None = None) -> dict:
    """Paired comparison of two models' predictions on the same images, matched by image_id:
    DeLong test of the AUC difference (A - B) and McNemar tests of Sn and Sp at each file's
    `predicted` column (i.e. at the thresholds each evaluation used)."""
    score_b = score_b or score
    a, b = read_predictions(a_csv), read_predictions(b_csv)
    for name, f, s in (("A", a, score), ("B", b, score_b)):
        if s not in f or "predicted" not in f:
            raise ConfigError(f"{name} has no '{s}' or no 'predicted' column")
        if f["image_id"].duplicated().any():
            raise ConfigError(f"{name}: duplicate image IDs, cannot match images (use --id-regex in evaluate)")
    m = a.set_index("image_id").add_suffix("_a").join(b.set_index("image_id").add_suffix("_b"), how="inner")
    if m.empty:
        raise ConfigError("no image IDs in common between the two files")
    if (m["label_a"] != m["label_b"]).any():
        raise ConfigError(f"{int((m['label_a'] != m['label_b']).sum())} matched images have different labels")
    y = m["label_a"].to_numpy().astype(int)
    res = {"n": len(m), "only_in_a": len(a) - len(m), "only_in_b": len(b) - len(m), "score_a": score,
           "score_b": score_b,
           "delong": stats.delong_paired(y, m[f"{score}_a"].to_numpy(), m[f"{score_b}_b"].to_numpy())}
    ca, cb = m["predicted_a"].to_numpy() == y, m["predicted_b"].to_numpy() == y
    for key, cls in (("sn", 1), ("sp", 0)):
        sel = y == cls
        res[f"{key}_a"] = float(ca[sel].mean()) if sel.any() else math.nan
        res[f"{key}_b"] = float(cb[sel].mean()) if sel.any() else math.nan
        res[f"mcnemar_{key}"] = stats.mcnemar(int((ca & ~cb)[sel].sum()), int((~ca & cb)[sel].sum()))
    return json_safe(res)


def calibrate(model_path: str | Path, data: str | Path, out: str | Path, threshold: float | str = 0.5,
              temperature: bool = True, on_bad_file: str = "error", batch_size: int = 16, num_workers: int = 2,
              force: bool = False, progress: bool = True, log=print) -> dict:
    """Fit a temperature (validation NLL) and choose a threshold on the calibrated validation
    probabilities; write a copy of the checkpoint with `vfa_temperature`, `vfa_threshold`,
    `vfa_threshold_source` and `vfa_calibration` (plain floats/strings), read by `load_model`."""
    import io

    import torch

    from vfa.predict import predict_loader

    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    try:
        kind, _ = stats.parse_threshold(threshold)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    model = load_model(model_path)
    samples = validate(load_samples(data, model.config.data.classes, split="val"), on_bad_file,
                       frame=model.config.data.frame)
    loader = DataLoader(eval_dataset(model, samples.paths, samples.labels), batch_size=batch_size,
                        num_workers=num_workers)
    y = np.asarray(samples.labels, dtype=int)
    logits = predict_loader(model, loader, progress, logits=True).astype(float)
    try:
        t = stats.fit_temperature(y, logits) if temperature else 1.0
    except ValueError as exc:
        raise ConfigError(f"{data}: {exc}") from None
    before, after = 1 / (1 + np.exp(-logits / model.temperature)), 1 / (1 + np.exp(-logits / t))
    if kind == "model":
        thr, source = model.threshold, model.threshold_source
    else:
        try:
            thr = stats.choose_threshold(y, after, threshold)
        except ValueError as exc:
            raise ConfigError(f"{data}: {exc}") from None
        source = f"{threshold} on {data} (n={len(y)}, vfa calibrate, temperature {t:.4g})"
    summary = {"n": len(y), "temperature": t, "threshold": thr,
               "nll_before": stats.nll(y, logits, model.temperature), "nll_after": stats.nll(y, logits, t),
               **{f"{k}_before": v for k, v in stats.calibration(y, before).items() if k != "ece_bins"},
               **{f"{k}_after": v for k, v in stats.calibration(y, after).items() if k != "ece_bins"}}
    ckpt = torch.load(model_path, map_location="cpu", weights_only=True)
    ckpt.update(vfa_temperature=float(t), vfa_threshold=float(thr), vfa_threshold_source=source,
                vfa_calibration={k: float(v) for k, v in summary.items()})
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write(out, buf.getvalue())
    log(f"temperature {t:.4g} (NLL {summary['nll_before']:.4f} -> {summary['nll_after']:.4f}, ECE "
        f"{summary['ece_before']:.4f} -> {summary['ece_after']:.4f}); threshold {thr:.4g} ({source}); wrote {out}")
    return summary


from vfa._callable import make_callable  # noqa: E402

make_callable(__name__, "evaluate")
