"""`vfa <command>`: a thin layer over the library API (vfa.synth, vfa.train, vfa.evaluate, ...)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vfa import config as config_mod

DESCRIPTION = """vfa: vertebral fracture assessment on DXA lateral-spine images with CNNs.

  vfa synth --out DATA --preset cpu-demo          synthetic VFA phantom (train/val/test, norm/frac)
  vfa train --train DATA/train --val DATA/val --out RUN [--preset NAME] [--set key=value ...]
  vfa train --resume RUN                          continue an interrupted run
  vfa import-keras MODEL.h5 --out MODEL.ckpt      the notebook's Keras .h5 -> a vfa checkpoint (no TensorFlow)
  vfa train --init MODEL.ckpt --train ... --out RUN   fine-tune from a checkpoint's weights
  vfa evaluate --model RUN/checkpoints/best.ckpt --data DATA/test --out DIR
  vfa evaluate ... --tta 5 --threshold-from VAL/predictions.csv     CIs, calibration, TTA, report.html
  vfa predict --model CKPT IMAGES... --out predictions.csv [--backend auto|torch|torch-bf16|compile|onnxruntime]
  vfa export --model CKPT --format onnx --out model.onnx     ONNX, verified against torch
  vfa calibrate --model CKPT --data DATA/val --out calibrated.ckpt [--threshold youden]
  vfa compare A/predictions.csv B/predictions.csv   paired DeLong (AUC) and McNemar (Sn, Sp)
  vfa summary --preset seed2019                   layer table, parameters, FLOPs
  vfa check-data DATA|MANIFEST.csv [--json]       counts, sizes, DICOM syntaxes, duplicates, bad files, verdict
  vfa split MANIFEST.csv --by patient_id --stratify label --ratios 0.7,0.15,0.15 [--folds K]
  vfa heatmap --model CKPT --data DIR --out DIR [--manifest CSV]   Grad-CAM overlays, pointing game
  vfa lr-find --train DIR [--preset NAME] --out DIR                LR range test, suggested rate
  vfa augment-preview --data DIR --preset seed --n 8 --out grid.png
"""


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 600x360, got '{text}'") from None
    return h, w


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _threshold(text: str) -> str:
    from vfa.stats import parse_threshold

    try:
        parse_threshold(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", type=int, default=0, metavar="N", help="test-time augmentation passes (0 = off; the notebook used 5)")
    p.add_argument("--tta-preset", default="tta", choices=("tta", "tta-keras215"),
                   help="tta: rotation +-20, zoom 0.9-1.1, channel shift; tta-keras215: as Keras 2.1.5 ran it")
    p.add_argument("--seed", type=int, default=0, help="TTA seed (results are deterministic given it)")
    p.add_argument("--score", choices=("raw", "tta_mean", "tta_max"), default="raw",
                   help="score that decides the class (and the flat metrics); tta_* need --tta")
    p.add_argument("--id-regex", help="image ID = first group of this regex on the relative path "
                                      "(replaces the notebook's [16:35] slice); default: the relative path")
    p.add_argument("--id-column", metavar="COL", help="with a manifest: image IDs from this column "
                                                       "(default: the file path)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "torch-bf16", "compile", "onnxruntime"),
                   help="inference backend (vfa.inference): auto = compile (bf16, cached kernels) for 256+ "
                        "images, else torch fp32; torch-bf16; onnxruntime (exported once, cached)")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help=f"one of: {', '.join(config_mod.PRESETS)} (default seed)")
    p.add_argument("--config", help="YAML file of overrides (e.g. a run's config.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override any config key, e.g. --set optim.lr=3e-4 --set trainer.precision=bf16-mixed")


def _resolve(args, extra: dict | None = None) -> config_mod.Config:
    overrides = config_mod.parse_set(args.set)
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    return config_mod.resolve(args.preset or "seed", args.config, overrides)


def cmd_synth(args) -> None:
    from vfa.synth import PhantomConfig, synthesize

    defaults = dict(config_mod.resolve(args.preset or "seed").synth)
    given = {"n": args.n, "prevalence": args.prevalence, "size": args.size, "splits": args.splits,
             "seed": args.seed, "grades": args.grades, "bit_depth": args.bit_depth, "format": args.format}
    defaults.update({k: v for k, v in given.items() if v is not None})
    if "size" in defaults:
        defaults["size"] = tuple(defaults["size"])
    frame = synthesize(args.out, PhantomConfig(**defaults), force=args.force)
    counts = frame.groupby(["split", "label"]).size().unstack(fill_value=0)
    print(f"wrote {len(frame)} phantom images to {args.out} (manifest.csv)\n{counts.to_string()}")


def cmd_train(args) -> None:
    from vfa.train import train

    if args.resume:
        run = Path(args.resume)
        cfg_file = run / "config.yaml"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{run} is not a vfa run directory (no config.yaml)")
        cfg = config_mod.from_dict(config_mod.yaml.safe_load(cfg_file.read_text()))
        # a resumed run may be extended (--epochs) or re-tuned (--set), e.g. trainer.devices
        config_mod._merge(cfg, config_mod.parse_set(args.set))
        if args.epochs:
            cfg.optim.epochs = args.epochs
        train(cfg, run, resume=True)
        return
    if not args.out:
        raise config_mod.ConfigError("--out RUN is required (or --resume RUN)")
    cfg = _resolve(args, {"data": {"train": args.train, "val": args.val, "test": args.test,
                                   "on_bad_file": args.on_bad_file},
                          "optim": {"epochs": args.epochs}, "model": {"init_from": args.init}})
    run = train(cfg, args.out, force=args.force)
    if args.test and not _secondary():
        from vfa.evaluate import evaluate

        evaluate(run / "checkpoints" / "best.ckpt", args.test, run, metrics_name="test_metrics.json",
                 on_bad_file=cfg.data.on_bad_file, progress=cfg.trainer.progress, split="test")
        print(f"held-out test metrics written to {run / 'test_metrics.json'}")


def cmd_import_keras(args) -> None:
    from vfa.keras_import import import_keras

    import_keras(args.h5, args.out, size=args.size, bn_after_relu=args.bn_after_relu or None, force=args.force)


def _secondary() -> bool:
    from vfa.runs import is_secondary_rank

    return is_secondary_rank()


def cmd_evaluate(args) -> None:
    from vfa.evaluate import evaluate

    evaluate(args.model, args.data, args.out, threshold=args.threshold or ("youden" if args.threshold_from else 0.5),
             threshold_from=args.threshold_from, tta=args.tta, tta_preset=args.tta_preset, seed=args.seed,
             score=args.score, id_regex=args.id_regex, on_bad_file=args.on_bad_file, batch_size=args.batch_size,
             force=args.force, manifest=args.manifest, gallery=args.gallery, id_column=args.id_column,
             backend=args.backend)
    print(f"wrote metrics.json, predictions.csv, final_results.xlsx, figures and report.html to {args.out}")


def cmd_calibrate(args) -> None:
    from vfa.evaluate import calibrate

    calibrate(args.model, args.data, args.out, threshold=args.threshold, temperature=not args.no_temperature,
              on_bad_file=args.on_bad_file, batch_size=args.batch_size, force=args.force)


def cmd_compare(args) -> None:
    import json

    from vfa.evaluate import compare

    res = compare(args.a, args.b, args.score, args.score_b)
    d, f = res["delong"], lambda v: "n/a" if v is None else (v if isinstance(v, str) else f"{v:.4f}")
    ci = d["diff_ci"]
    print(f"{res['n']} images matched by id (only in A: {res['only_in_a']}, only in B: {res['only_in_b']})\n"
          f"AUC A {f(d['auc_a'])}  B {f(d['auc_b'])}  difference {f(d['diff'])} (95% CI {f(ci[0])} to "
          f"{f(ci[1])}), paired DeLong p = {f(d['p'])}")
    for key, name in (("sn", "Sn"), ("sp", "Sp")):
        mc = res[f"mcnemar_{key}"]
        print(f"{name} A {f(res[key + '_a'])}  B {f(res[key + '_b'])}  McNemar p = {f(mc['p'])} "
              f"({mc['method']}; discordant {mc['b']} / {mc['c']})")
    for note in d["notes"]:
        print(f"note: {note}")
    if args.out:
        from vfa.runs import atomic_write

        atomic_write(Path(args.out), json.dumps(res, indent=2))


def cmd_predict(args) -> None:
    from vfa.predict import predict_files
    from vfa.runs import atomic_write

    if Path(args.out).exists() and not args.force:
        raise FileExistsError(f"{args.out} exists; pass --force to overwrite it")
    frame = predict_files(args.model, args.inputs, tta=args.tta, tta_preset=args.tta_preset, seed=args.seed,
                          id_regex=args.id_regex, score=args.score, batch_size=args.batch_size,
                          on_bad_file=args.on_bad_file, progress=True, log=lambda m: print(m, file=sys.stderr),
                          id_column=args.id_column, keep_identifiers=args.keep_identifiers, backend=args.backend)
    atomic_write(Path(args.out), frame.to_csv(index=False))
    skipped = frame.attrs["skipped"]
    if skipped:
        import csv
        import io

        buf = io.StringIO()
        csv.writer(buf).writerows([("file", "reason"), *skipped])
        skipped_csv = Path(args.out).with_name(Path(args.out).stem + "_skipped.csv")
        atomic_write(skipped_csv, buf.getvalue())
    print(f"wrote {len(frame)} predictions to {args.out}" + (f"; skipped {len(skipped)} (listed in "
                                                             f"{skipped_csv})" if skipped else ""))


def cmd_export(args) -> None:
    from vfa.export import export_onnx

    res = export_onnx(args.model, args.out, batch=args.batch, opset=args.opset, force=args.force)
    print(f"wrote {res['path']} (opset {res['opset']}, input {res['input']}); onnxruntime vs torch fp32: "
          f"max |delta p| = {res['max_abs_dp']:.1e}")


def cmd_summary(args) -> None:
    from vfa.summary import summary

    print(summary(_resolve(args)))


def cmd_heatmap(args) -> None:
    import numpy as np

    from vfa.cam import write_heatmaps
    from vfa.data import Samples, validate
    from vfa.predict import expand_inputs, load_model

    model = load_model(args.model)
    data = Path(args.data)
    if args.predictions:
        from vfa.evaluate import read_predictions

        frame = read_predictions(args.predictions, need_label=args.select != "all")
        if args.select != "all":
            y, pred = frame["label"], frame["predicted"]
            keep = {"tp": (y == 1) & (pred == 1), "fp": (y == 0) & (pred == 1), "fn": (y == 1) & (pred == 0),
                    "tn": (y == 0) & (pred == 0), "errors": y != pred}[args.select]
            frame = frame[keep]
        # evaluate's `file` is relative to its data folder; predict's is the path it was given
        paths = [str(data / f) if (data / f).exists() else str(f) for f in frame["file"]]
    else:
        if args.select != "all":
            raise config_mod.ConfigError("--select needs --predictions CSV (with label and predicted columns)")
        paths = expand_inputs(data)
    samples = validate(Samples(paths, [0] * len(paths), str(data)), args.on_bad_file, frame=model.config.data.frame)
    for path, reason in samples.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    paths = samples.paths
    if args.sample and args.sample < len(paths):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(paths), args.sample, replace=False))
        paths = [paths[i] for i in keep]
    res = write_heatmaps(model, paths, args.out, root=data if data.is_dir() else None, method=args.method,
                         layer=args.target_layer, alpha=args.alpha, with_panel=args.panel,
                         start_index=args.start_index, manifest=args.manifest, batch_size=args.batch_size,
                         log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {res['written']} heatmaps to {args.out} ({res['skipped_existing']} already there)")
    loc = res.get("localization")
    if loc:
        lo, hi = loc["pointing_game_ci"]
        tol = loc["pointing_game_tol15px"]
        print(f"pointing game {loc['pointing_game']:.3f} (95% CI {lo:.3f}-{hi:.3f}; {loc['pointing_hits']} of "
              f"{loc['n_fractured']} fractured images; within 15 px: {tol:.3f}), heatmap mass in boxes "
              f"{loc['mass_in_boxes']:.3f} (localization.json)")


def cmd_lr_find(args) -> None:
    from vfa.lr_find import lr_find

    if args.model:
        from vfa.predict import load_model

        model = load_model(args.model)  # only read: the sweep trains a copy
        cfg = model.config
        config_mod._merge(cfg, config_mod.parse_set(args.set))
    else:
        model, cfg = None, _resolve(args)
    lr_find(cfg, args.train, args.out, model=model, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps,
            per_epoch=args.per_epoch, early_stop=args.early_stop or None, beta=args.beta, force=args.force)
    print(f"wrote lr_find.png, lr_find.json and lr_find.csv to {args.out}")


def cmd_augment_preview(args) -> None:
    from vfa.preview import augment_preview

    drawn = augment_preview(args.data, args.out, args.preset, args.n, args.images, args.seed, args.size, args.force)
    print(f"wrote {args.out}: {args.images} image(s) x {args.n} augmented versions ({len(drawn)} draws)")


def cmd_check_data(args) -> int:
    import json

    from vfa.check import check_data, format_report

    rep = check_data(args.data, tuple(args.classes.split(",")), frame=args.frame, workers=args.workers,
                     keep_identifiers=args.keep_identifiers)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0 if rep["ready"] else 1


def cmd_split(args) -> None:
    from vfa.split import format_summary, run_split, summary

    by = args.by
    strat = None if args.stratify in ("", "none") else args.stratify
    out, frame = run_split(args.manifest, args.out, by, strat, args.ratios, args.folds, args.seed, args.force)
    print(format_summary(summary(frame, by, strat)))
    if args.folds:
        print(format_summary(summary(frame[frame["split"] != "test"], by, strat, "fold")))
    print(f"wrote {out} ({len(frame)} rows; no {by} in two splits)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vfa", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic VFA phantom dataset")
    p.add_argument("--out", required=True, help="output folder (OUT/{train,val,test}/{norm,frac}, manifest.csv)")
    p.add_argument("--preset", help="take phantom defaults from a training preset (e.g. cpu-demo)")
    p.add_argument("--n", type=int, help="number of images (default 1000)")
    p.add_argument("--prevalence", type=float, help="share of fractured images (default 0.25)")
    p.add_argument("--size", type=_size, help="HxW (default 1024x614)")
    p.add_argument("--splits", type=_floats, help="train,val,test shares (default 0.7,0.15,0.15)")
    p.add_argument("--grades", type=_floats, help="shares of Genant grade 1,2,3 among positives (default 0.4,0.4,0.2)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), help="PNG bit depth (default 8)")
    p.add_argument("--format", choices=("png", "dicom", "dicom-mono1"),
                   help="png (default); dicom: MONOCHROME2 .dcm files with fake identifiers; dicom-mono1: MONOCHROME1")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--force", action="store_true", help="replace an existing phantom in OUT")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a model (Lightning)")
    p.add_argument("--train", help="training folder with norm/ and frac/, or a manifest CSV (its 'train' split)")
    p.add_argument("--val", help="validation folder with norm/ and frac/, or a manifest CSV (its 'val' split; "
                                 "default: the --train manifest's)")
    p.add_argument("--test", help="optional held-out folder or manifest: checked for leakage before training, "
                                  "best.ckpt evaluated there after")
    p.add_argument("--out", help="run directory")
    p.add_argument("--epochs", type=int)
    p.add_argument("--resume", metavar="RUN", help="continue RUN from checkpoints/last.ckpt")
    p.add_argument("--init", metavar="CKPT", help="start from this vfa checkpoint's weights (e.g. from "
                                                  "vfa import-keras); its architecture replaces the preset's")
    p.add_argument("--on-bad-file", choices=("error", "skip"))
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    _config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("import-keras", help="convert the notebook's Keras .h5 (model or weights) to a vfa checkpoint")
    p.add_argument("h5", help="a Keras 2.x .h5 from model.save or model.save_weights (read with h5py; no code runs)")
    p.add_argument("--out", required=True, help="the vfa checkpoint to write (e.g. MODEL.ckpt)")
    p.add_argument("--size", type=_size, help="input HxW (default: the model's fixed input size, else 600x360)")
    p.add_argument("--bn-after-relu", action="store_true",
                   help="weights-only file whose head BatchNormalization followed the ReLU (a full model's config says so itself)")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(func=cmd_import_keras)

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a labelled folder")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=_threshold, default=None,
                   help="0.5 (default, as the notebook), a number, youden, sensitivity=0.90, specificity=0.90, "
                        "or model (the checkpoint's stored threshold)")
    p.add_argument("--threshold-from", metavar="VAL_PREDICTIONS.csv",
                   help="choose the threshold (default youden) on these validation predictions and apply it unchanged")
    _predict_args(p)
    p.add_argument("--on-bad-file", choices=("error", "skip"), default="error")
    p.add_argument("--manifest", help="CSV with fractured_boxes (as vfa synth writes) for the Grad-CAM pointing "
                                      "game; default: a phantom's manifest.csv in DATA or its parent")
    p.add_argument("--gallery", type=int, default=4, metavar="K",
                   help="Grad-CAM gallery in the report: up to K true positives, false positives, false negatives")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="fit temperature scaling / a threshold on validation; store in a new checkpoint")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="labelled validation folder with norm/ and frac/")
    p.add_argument("--out", required=True, help="checkpoint file to write (the input is never changed)")
    p.add_argument("--threshold", type=_threshold, default="0.5",
                   help="threshold to store: a number (default 0.5), youden, sensitivity=X, specificity=X, model")
    p.add_argument("--no-temperature", action="store_true", help="store T = 1 (threshold only)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--on-bad-file", choices=("error", "skip"), default="error")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("compare", help="paired DeLong and McNemar tests of two models' predictions.csv")
    p.add_argument("a", help="predictions.csv of model A (from vfa evaluate)")
    p.add_argument("b", help="predictions.csv of model B, same images")
    p.add_argument("--score", choices=("raw", "tta_mean", "tta_max"), default="raw")
    p.add_argument("--score-b", choices=("raw", "tta_mean", "tta_max"), help="B's score if different")
    p.add_argument("--out", help="also write the results as JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", help="P(fracture) for unlabeled images")
    p.add_argument("--model", required=True)
    p.add_argument("inputs", nargs="+", help="image or DICOM files, folders, globs or manifest CSVs")
    p.add_argument("--keep-identifiers", action="store_true",
                   help="add DICOM PatientID, StudyDate, ... columns (default: none in any output)")
    p.add_argument("--out", required=True, help="CSV file to write")
    _predict_args(p)
    p.add_argument("--on-bad-file", choices=("error", "skip"), default="skip")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a checkpoint to ONNX, verified against torch (max |delta p| <= 1e-4)")
    p.add_argument("--model", required=True, help="vfa checkpoint")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--out", required=True, help="file to write, e.g. model.onnx (batch size is dynamic)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--batch", type=int, default=2, help="batch of random images used to trace and verify")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("check-data", help="one pass over a dataset: counts, sizes, formats, duplicates, bad files, verdict")
    p.add_argument("data", help="class folder, folder of split folders (train/val/test), or manifest CSV[:SPLIT]")
    p.add_argument("--classes", default="norm,frac", help="class names, label 0 first (default norm,frac)")
    p.add_argument("--frame", type=int, metavar="K", help="read frame K of multi-frame files (default: refuse them)")
    p.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep-identifiers", action="store_true",
                   help="include DICOM PatientID, PatientName, dates and UIDs in the JSON (default: never)")
    p.set_defaults(func=cmd_check_data)

    p = sub.add_parser("split", help="patient-level stratified train/val/test split (or folds) of a manifest")
    p.add_argument("manifest", help="CSV with path,label,patient_id,...")
    p.add_argument("--by", default="patient_id", help="group column: no value is in two splits (default patient_id)")
    p.add_argument("--stratify", default="label", help="column to balance across splits, or none (default label)")
    p.add_argument("--ratios", type=_floats, default=(0.7, 0.15, 0.15),
                   help="train,val,test shares (default 0.7,0.15,0.15); with --folds the last is the test share")
    p.add_argument("--folds", type=int, metavar="K", help="K cross-validation folds (a 'fold' column) over non-test rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="CSV to write (default MANIFEST_split.csv beside it; the input is never changed)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("summary", help="layer table, parameter count and FLOPs of the configured model")
    _config_args(p)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("heatmap", help="Grad-CAM overlays for a folder or a predictions CSV (resumable)")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="image folder (searched recursively), file or glob; with "
                                                  "--predictions, the folder its relative `file` paths are under")
    p.add_argument("--out", required=True, help="output folder (mirrors DATA's sub-folders); existing heatmaps "
                                                "are kept and skipped, so an interrupted run resumes")
    p.add_argument("--predictions", metavar="CSV", help="only the images of this predictions.csv (vfa evaluate/predict)")
    p.add_argument("--select", choices=("all", "tp", "fp", "fn", "tn", "errors"), default="all",
                   help="with --predictions: e.g. fn = false negatives only (label and predicted columns)")
    p.add_argument("--manifest", help="CSV with fractured_boxes (vfa synth's manifest.csv): pointing game and "
                                      "heatmap mass inside the boxes -> localization.json")
    p.add_argument("--method", choices=("gradcam", "gradcam++"), default="gradcam")
    p.add_argument("--target-layer", default="auto", metavar="NAME",
                   help="module name, e.g. backbone.layer3 (default auto: the backbone's last feature map, "
                        "for Inception-ResNet-v2 its 1536-channel output, as the notebook)")
    p.add_argument("--alpha", type=float, default=0.3, help="heatmap weight in the blend (notebook: 0.3)")
    p.add_argument("--panel", action="store_true", help="also write panel_NNN_NAME.png: image | overlay, P printed")
    p.add_argument("--start-index", type=int, default=0, help="skip the first N images (the notebook's starting_index)")
    p.add_argument("--sample", type=int, metavar="N", help="a random sample of N images (seeded by --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--on-bad-file", choices=("error", "skip"), default="skip")
    p.set_defaults(func=cmd_heatmap)

    p = sub.add_parser("lr-find", help="learning-rate range test on a copy of the model")
    p.add_argument("--train", required=True, help="class folders norm/ and frac/ (a small sample is enough)")
    p.add_argument("--out", required=True, help="folder for lr_find.png, lr_find.json, lr_find.csv")
    p.add_argument("--model", help="start from this checkpoint's weights and config (the file is only read)")
    p.add_argument("--min-lr", type=float, help="first rate (default 1e-7; 1e-10 with --per-epoch)")
    p.add_argument("--max-lr", type=float, default=1.0)
    p.add_argument("--steps", type=int, help="number of rates (default 100 steps; 50 epochs with --per-epoch)")
    p.add_argument("--per-epoch", action="store_true",
                   help="the notebook's variant: one rate per epoch over the whole folder, 1e-10*10^arange(0,10,10/N)")
    p.add_argument("--early-stop", type=float, default=4.0,
                   help="stop when the smoothed loss exceeds this times its best (0: never)")
    p.add_argument("--beta", type=float, help="loss smoothing (default 0.98; 0.8 with --per-epoch; 0: none)")
    p.add_argument("--force", action="store_true")
    _config_args(p)
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("augment-preview", help="grid of augmented versions of training images, labelled")
    p.add_argument("--data", required=True, help="folder (its frac/ first), image file or glob")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--preset", default="seed",
                   help="training preset (seed, keras215, cpu-demo, ...) or augmentation preset (tta, none, ...)")
    p.add_argument("--n", type=int, default=8, help="augmented versions per image")
    p.add_argument("--images", type=int, default=1, help="number of images (rows)")
    p.add_argument("--size", type=_size, help="HxW (default: the preset's input size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_augment_preview)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vfa.io import BadImageError
    from vfa.samples import DataError  # == vfa.data.DataError, without importing torch

    user_errors = (config_mod.ConfigError, DataError, BadImageError, FileExistsError, FileNotFoundError,
                   NotADirectoryError)
    try:
        rc = args.func(args)
    except user_errors as exc:
        if args.debug:
            raise
        print(f"vfa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vfa {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
