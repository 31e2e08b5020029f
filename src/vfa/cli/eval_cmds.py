"""Commands that run a trained model: evaluate, calibrate, compare, predict, heatmap
(each parser beside its command)."""
from __future__ import annotations

import sys
from pathlib import Path

from vfa.cli.options import (bad_file_arg, force_arg, model_arg, model_args, predict_args, threshold_arg,
                             deprecated)
from vfa.registry import CAM_METHODS, FAMILIES


def _dicom_out_arg(p) -> None:
    p.add_argument("--dicom-out", metavar="DIR",
                   help="also write, per DICOM input, a Structured Report (TID 1500) and Secondary Capture overlays "
                        "into the image's study, for the PACS (docs/dicom-outputs.md); inputs must be DICOM")


def cmd_evaluate(args) -> None:
    from vfa.evaluation.evaluate import evaluate

    threshold = args.threshold or ("youden" if args.threshold_from else 0.5)
    result = evaluate(args.model, args.data, args.out, threshold=threshold,
             threshold_from=args.threshold_from, tta=args.tta, tta_preset=args.tta_preset, seed=args.seed,
             score=args.score, id_regex=args.id_regex, on_bad_file=args.on_bad_file, batch_size=args.batch_size,
             force=args.force, manifest=args.boxes, gallery=args.gallery, id_column=args.id_column,
             backend=args.backend, device=args.device, keep_identifiers=args.keep_identifiers,
             num_workers=args.workers, dicom_out=args.dicom_out)
    print(f"wrote {FAMILIES[result.get('family', 'image')].evaluate_outputs} to {args.out}")


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a checkpoint (or an ensemble) on a labelled folder")
    model_arg(p)
    p.add_argument("--data", required=True, help="labelled images: class folders norm/ and frac/, or a manifest "
                                                 "CSV (MANIFEST.csv:SPLIT for one split)")
    p.add_argument("--out", required=True, help="folder for predictions.csv, metrics.json, figures and report.html")
    p.add_argument("--threshold", type=threshold_arg, default=None,
                   help="0.5 (default, as the notebook), a number, youden, sensitivity=0.90, specificity=0.90, "
                        "or model (the checkpoint's stored threshold)")
    p.add_argument("--threshold-from", metavar="VAL_PREDICTIONS.csv",
                   help="choose the threshold (default youden) on these validation predictions and apply it unchanged")
    predict_args(p)
    bad_file_arg(p, "error")
    p.add_argument("--boxes", metavar="CSV", help="CSV with fractured_boxes (as vfa synth's manifest.csv) for the "
                                                  "pointing game; default: a phantom's manifest.csv in DATA or its "
                                                  "parent")
    deprecated(p, "--manifest", "--boxes", "boxes")
    p.add_argument("--keep-identifiers", action="store_true",
                   help="keep DICOM UIDs that name files in image_id, file and heatmap names (default: hashed)")
    p.add_argument("--gallery", type=int, default=4, metavar="K",
                   help="heatmap gallery in the report (the model's CAM method): up to K true positives, "
                        "false positives, false negatives")
    _dicom_out_arg(p)
    force_arg(p, "replace an existing --out folder (and --dicom-out's objects)")
    p.set_defaults(func=cmd_evaluate)


def cmd_calibrate(args) -> None:
    from vfa.evaluation.calibrate import calibrate

    calibrate(args.model, args.data, args.out, threshold=args.threshold, temperature=not args.no_temperature,
              on_bad_file=args.on_bad_file, batch_size=args.batch_size, force=args.force, device=args.device,
              num_workers=args.workers)


def add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit temperature scaling / a threshold on validation; store in a new "
                                         "checkpoint "
                                         "(an ensemble: the threshold, in a new ensemble file)")
    model_arg(p)
    p.add_argument("--data", required=True, help="labelled validation folder with norm/ and frac/")
    p.add_argument("--out", required=True, help="checkpoint file to write (an ensemble: a .yaml ensemble file); "
                                                "the input is never changed")
    p.add_argument("--threshold", type=threshold_arg, default="0.5",
                   help="threshold to store: a number (default 0.5), youden, sensitivity=X, specificity=X, model")
    p.add_argument("--no-temperature", action="store_true", help="store T = 1 (threshold only)")
    model_args(p)
    bad_file_arg(p, "error")
    force_arg(p, "replace --out")
    p.set_defaults(func=cmd_calibrate)


def cmd_compare(args) -> None:
    from vfa.evaluation.compare import compare
    from vfa.runs import refuse_existing

    if args.out:
        refuse_existing(args.out, args.force, inputs=[args.a, args.b])
    res = compare(args.a, args.b, args.score, args.score_b)
    d, f = res["delong"], lambda v: "n/a" if v is None else (v if isinstance(v, str) else f"{v:.4f}")
    ci = d["diff_ci"]
    by = "id" if res["matched_by"] == "image_id" else res["matched_by"]
    print(f"{res['n']} images matched by {by} (only in A: {res['only_in_a']}, only in B: {res['only_in_b']})\n"
          f"AUC A {f(d['auc_a'])}  B {f(d['auc_b'])}  difference {f(d['diff'])} (95% CI {f(ci[0])} to "
          f"{f(ci[1])}), paired DeLong p = {f(d['p'])}")
    for key, name in (("sn", "Sn"), ("sp", "Sp")):
        mc = res[f"mcnemar_{key}"]
        print(f"{name} A {f(res[key + '_a'])}  B {f(res[key + '_b'])}  McNemar p = {f(mc['p'])} "
              f"({mc['method']}; discordant {mc['b']} / {mc['c']})")
    for note in d["notes"]:
        print(f"note: {note}")
    if args.out:
        from vfa.runs import write_json

        write_json(args.out, res)


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="paired DeLong and McNemar tests of two models' predictions.csv")
    p.add_argument("a", help="predictions.csv of model A (from vfa evaluate)")
    p.add_argument("b", help="predictions.csv of model B, same images")
    p.add_argument("--score", choices=("raw", "tta_mean", "tta_max"), default="raw", help="A's score (default raw)")
    p.add_argument("--score-b", choices=("raw", "tta_mean", "tta_max"), help="B's score if different")
    p.add_argument("--out", help="also write the results as JSON")
    force_arg(p, "replace --out")
    p.set_defaults(func=cmd_compare)


def cmd_predict(args) -> None:
    from vfa.inference.run import predict_archive

    summary = predict_archive(
        args.model, args.inputs, args.out, sets=args.set, force=args.force, resume=args.resume, tta=args.tta,
        tta_preset=args.tta_preset, seed=args.seed, id_regex=args.id_regex, score=args.score,
        batch_size=args.batch_size, workers=args.workers, on_bad_file=args.on_bad_file, progress=True,
        log=lambda m: print(m, file=sys.stderr), id_column=args.id_column, keep_identifiers=args.keep_identifiers,
        backend=args.backend, device=args.device, threshold=args.threshold, dicom_out=args.dicom_out)
    if summary is not None:  # None on secondary ranks
        print(f"wrote {summary.line()}")


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="P(fracture) for unlabeled images, streamed to a CSV or Parquet file "
                                       "(resumable; one model, an ensemble, sharded over processes)")
    model_arg(p)
    p.add_argument("inputs", nargs="+", help="image or DICOM files, folders, globs or manifest CSVs")
    p.add_argument("--keep-identifiers", action="store_true",
                   help="add DICOM PatientID, StudyDate, ... columns and keep DICOM UIDs that name files "
                        "(default: no identifier in any output; UIDs in names become hashes)")
    p.add_argument("--out", required=True, help="CSV or .parquet file to write; rows are flushed per batch to "
                                                "OUT.partial, so rerunning a killed command resumes it")
    p.add_argument("--resume", action="store_true",
                   help="add to a finished --out the files not in it yet (or changed since)")
    p.add_argument("--threshold", default="model",
                   help="threshold of the predicted column: model (default: the checkpoint's, 0.5 unless "
                        "vfa calibrate stored one) or a number")
    p.add_argument("--set", action="append", metavar="trainer.KEY=VALUE", default=[],
                   help="shard over processes with Lightning: trainer.devices=N, trainer.num_nodes=N, "
                        "trainer.strategy=ddp, trainer.accelerator=cpu|gpu (torchrun / SLURM are detected)")
    predict_args(p)
    bad_file_arg(p, "skip")
    _dicom_out_arg(p)
    force_arg(p, "replace --out (and --dicom-out's objects)")
    p.set_defaults(func=cmd_predict)


def cmd_heatmap(args) -> None:
    from vfa.explain.heatmaps import heatmap_inputs, write_heatmaps
    from vfa.inference.ensemble import load_ensemble

    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    model = load_ensemble(args.model, args.device)
    paths = heatmap_inputs(model, args.data, args.predictions, args.select, args.sample, args.seed,
                           args.on_bad_file, log)
    data = Path(args.data)
    res = write_heatmaps(model, paths, args.out, root=data if data.is_dir() else None, method=args.method,
                         layer=args.target_layer, alpha=args.alpha, with_panel=args.panel,
                         start_index=args.start_index, manifest=args.boxes, batch_size=args.batch_size,
                         output_stride=args.output_stride, log=log, force=args.force,
                         inputs=[args.data, *args.model, args.predictions, args.boxes],
                         keep_identifiers=args.keep_identifiers, dicom_out=args.dicom_out)
    print(f"wrote {res['written']} heatmaps to {args.out} ({res['skipped_existing']} already there)")
    loc = res.get("localization")
    if loc:
        lo, hi = loc["pointing_game_ci"]
        tol = loc["pointing_game_tol15px"]
        print(f"pointing game {loc['pointing_game']:.3f} (95% CI {lo:.3f}-{hi:.3f}; {loc['pointing_hits']} of "
              f"{loc['n_fractured']} fractured images; within 15 px: {tol:.3f}), heatmap mass in boxes "
              f"{loc['mass_in_boxes']:.3f} (localization.json)")


def add_heatmap(sub) -> None:
    p = sub.add_parser("heatmap", help="Grad-CAM overlays for a folder or a predictions CSV (resumable; "
                                       "an ensemble's maps are the mean of its members')")
    model_arg(p)
    p.add_argument("--data", required=True, help="image folder (searched recursively), file or glob; with "
                                                  "--predictions, the folder its relative `file` paths are under")
    p.add_argument("--out", required=True, help="output folder (mirrors DATA's sub-folders); existing heatmaps "
                                                "are kept and skipped, so an interrupted run resumes")
    p.add_argument("--predictions", metavar="CSV",
                   help="only the images of this predictions.csv (vfa evaluate/predict)")
    p.add_argument("--select", choices=("all", "tp", "fp", "fn", "tn", "errors"), default="all",
                   help="with --predictions: e.g. fn = false negatives only (label and predicted columns)")
    p.add_argument("--boxes", metavar="CSV", help="CSV with fractured_boxes (vfa synth's manifest.csv): pointing "
                                                  "game and heatmap mass inside the boxes -> localization.json")
    deprecated(p, "--manifest", "--boxes", "boxes")
    p.add_argument("--method", choices=CAM_METHODS.names(),
                   help=f"{CAM_METHODS.describe()}; default: the model's model.cam_method (cpu-demo: layercam, "
                        "else gradcam)")
    p.add_argument("--output-stride", type=int, metavar="N",
                   help="evaluate the backbone at output stride N for finer maps (same weights, a trous); "
                        "default: the model's model.cam_output_stride (cpu-demo: 4); 0: the backbone's own")
    p.add_argument("--target-layer", metavar="NAME",
                   help="module name, e.g. backbone.layer3; auto: the backbone's last feature map (for "
                        "Inception-ResNet-v2 its 1536-channel output, as the notebook); default: the model's "
                        "model.cam_layer (cpu-demo: backbone.features.5, else auto)")
    p.add_argument("--alpha", type=float, default=0.3, help="heatmap weight in the blend (notebook: 0.3)")
    p.add_argument("--panel", action="store_true", help="also write panel_NNN_NAME.png: image | overlay, P printed")
    p.add_argument("--start-index", type=int, default=0, help="skip the first N images (the notebook's starting_index)")
    p.add_argument("--sample", type=int, metavar="N", help="a random sample of N images (seeded by --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    model_args(p)
    bad_file_arg(p, "skip")
    p.add_argument("--keep-identifiers", action="store_true",
                   help="keep DICOM UIDs that name files in the overlay names and heatmaps.csv (default: hashed)")
    _dicom_out_arg(p)
    force_arg(p, "redraw overlays that already exist (default: keep and skip them, so a run resumes)")
    p.set_defaults(func=cmd_heatmap)
