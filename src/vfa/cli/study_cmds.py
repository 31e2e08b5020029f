"""Study commands: cross-validation (`vfa cv`) and the runs table (`vfa runs list|compare`)."""
from __future__ import annotations

from vfa import config as config_mod
from vfa.cli.options import bad_file_arg, config_args, force_arg, resolve_config


def cmd_cv(args) -> None:
    from vfa.cli.model_cmds import trainer_device
    from vfa.cv import cross_validate

    extra = {"data": {"train": args.data, "folds": args.folds, "on_bad_file": args.on_bad_file},
             "optim": {"epochs": args.epochs}, "trainer": trainer_device(args.device)}
    cfg = resolve_config(args, extra)
    cross_validate(cfg, args.out, resume=args.resume, force=args.force, checkpoint=args.checkpoint)


def add_cv(sub) -> None:
    p = sub.add_parser("cv", help="K-fold cross-validation: a model per fold, pooled out-of-fold metrics, the fold "
                                  "ensemble on the held-out test rows")
    p.add_argument("--data", required=True, metavar="MANIFEST.csv",
                   help="manifest with patient_id (and split: its test rows stay out; a fold column is used "
                        "when present, else folds are made, patient-level and stratified)")
    p.add_argument("--folds", type=int, help="number of folds K (default 5; data.folds)")
    p.add_argument("--out", required=True, help="folder: fold0 ... foldK-1 run directories and the summary")
    p.add_argument("--epochs", type=int, help="epochs per fold (default: the preset's optim.epochs; the SGDR cycle "
                                              "keeps optim.sgdr_steps, as vfa train --epochs)")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="each fold's model for out-of-fold scores and the ensemble (default last: best is "
                        "chosen on the fold it would be scored on)")
    p.add_argument("--resume", action="store_true", help="continue unfinished folds, start missing ones, then "
                                                         "summarize")
    bad_file_arg(p, None)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (as vfa train)")
    force_arg(p, "replace an existing cross-validation (its folds are trained again)")
    config_args(p)
    p.epilog = "one fold alone (a cluster array job): --set data.fold=K"
    p.set_defaults(func=cmd_cv)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cmd_runs(args) -> None:
    from vfa.data.check import text_table
    from vfa.evaluation import runs_table

    if args.action == "list":
        frame = runs_table.list_runs(args.paths[0] if args.paths else "runs")
        if frame.empty:
            print("no vfa training runs found")
            return
        rows = [[r.run, r.preset, f"{r.epochs}/{_fmt(r.of)}", _fmt(r.best_val_auc), _fmt(r.best_epoch),
                 "-" if r.wall_s is None or r.wall_s != r.wall_s else f"{r.wall_s / 60:.1f} min", _fmt(r.test_auc),
                 r.overrides or "-"] for r in frame.itertuples()]
        print("\n".join(text_table(["run", "preset", "epochs", "best val AUC", "at epoch", "wall", "test AUC",
                                "overrides"], rows)))
        return
    if len(args.paths) != 2:
        raise config_mod.ConfigError("vfa runs compare takes two run directories: vfa runs compare A B")
    result = runs_table.compare_runs(*args.paths)
    print(f"A = {result['A']}\nB = {result['B']}\n")
    rows = [[c["key"], _fmt(c["A"]), _fmt(c["B"])] for c in result["config"]]
    print("\n".join(text_table(["config", "A", "B"], rows)) if rows else "same config")
    print()
    rows = [[m["metric"], _fmt(m["A"]), _fmt(m["B"]), _fmt(m["B - A"])] for m in result["metrics"]]
    print("\n".join(text_table(["metric", "A", "B", "B - A"], rows)) if rows else "no metrics yet")


def add_runs(sub) -> None:
    p = sub.add_parser("runs", help="list training runs in a folder, or compare two side by side")
    p.add_argument("action", choices=("list", "compare"), help="list: the runs under a folder; compare: two runs "
                                                              "side by side")
    p.add_argument("paths", nargs="*", help="list: the folder to search (default runs); compare: two run directories")
    p.set_defaults(func=cmd_runs)


def cmd_cross_vendor(args) -> None:
    from vfa.evaluation.cross_vendor import format_table

    print(format_table(args.root))


def add_cross_vendor(sub) -> None:
    p = sub.add_parser("cross-vendor", help="print the train-vendor x test-vendor table of make demo-clinical")
    p.add_argument("root", help="the folder holding FAMILY-TRAIN/on-TEST/metrics.json (make demo-clinical: "
                                "runs/demo-clinical)")
    p.set_defaults(func=cmd_cross_vendor)


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _risk_cuts(text: str) -> tuple[float, ...]:
    from vfa.cohort.data import CohortError

    try:
        return tuple(float(v) for v in _csv_list(text))
    except ValueError:
        raise CohortError(f"--risk-cuts: numbers separated by commas, e.g. 0.1,0.2; got {text!r}") from None


def cmd_cohort(args) -> None:
    from vfa.cohort.run import analyze

    codes = tuple(int(v) for v in _csv_list(args.event_codes))
    analyze(args.predictions, args.outcomes, args.out, id_col=args.id, exposure=args.exposure,
            threshold=args.threshold, time=args.time, events=_csv_list(args.event), codes=codes,
            adjust=_csv_list(args.adjust or ""), horizon=args.horizon, reader=args.reader, start=args.start_date,
            end=args.end_date, force=args.force, base=_csv_list(args.base or ""),
            risk_cuts=_risk_cuts(args.risk_cuts), bootstrap=args.bootstrap, seed=args.seed)
    print(f"wrote cohort.json, cohort.xlsx, figures and cohort_report.html to {args.out}")


def add_cohort(sub) -> None:
    p = sub.add_parser("cohort", help="does the model's finding predict the next fracture? KM, competing-risk "
                                      "incidence, Cox HRs, Fine-Gray sHRs, C-index, agreement with a reader")
    p.add_argument("--predictions", required=True, help="vfa predict / evaluate output")
    p.add_argument("--outcomes", required=True, help="CSV: one row per image (or patient) with the join key, "
                                                     "follow-up time, event code(s), covariates")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--id", default="image_id", help="join key, in both files (default image_id)")
    p.add_argument("--exposure", default="predicted", choices=("predicted", "raw", "tta_mean", "tta_max"),
                   help="predicted: the model's finding as written (default); a score: finding = score >= "
                        "--threshold; the score per SD is always analysed too")
    p.add_argument("--threshold", type=float, help="threshold for a score exposure (default 0.5)")
    p.add_argument("--time", default="time", help="follow-up in years from the scan (default time)")
    p.add_argument("--start-date", help="or: follow-up = (--end-date - --start-date) / 365.25")
    p.add_argument("--end-date", help="column of the end of follow-up (the event, death or censoring date), "
                                      "with --start-date")
    p.add_argument("--event", default="event", help="event column(s), comma-separated: one analysis each")
    p.add_argument("--event-codes", default="0,1,2", help="censored,event,competing (default 0,1,2)")
    p.add_argument("--adjust", help="covariates for the adjusted models, e.g. age,sex,bmd_tscore")
    p.add_argument("--base", help="the clinical model for the added value of the finding and the score, e.g. "
                                  "age,sex,bmd_tscore,prior_fracture,glucocorticoids. Rows missing any --adjust or "
                                  "--base covariate are left out of every model (listed in exclusions.csv)")
    p.add_argument("--horizon", type=float, default=5.0,
                   help="years for the cumulative incidence, and for the AUC, Uno's C (tau) and NRI (default 5)")
    p.add_argument("--risk-cuts", default="0.1,0.2",
                   help="risk cut-offs at the horizon for the NRI of --base (default 0.1,0.2)")
    p.add_argument("--bootstrap", type=int, default=200,
                   help="resamples for every bootstrap CI (C-index, added value; default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    p.add_argument("--reader", help="column with a reader's call (0/1): kappa and PABAK against the model")
    force_arg(p, "replace the outputs in --out")
    p.set_defaults(func=cmd_cohort)


def cmd_synth_cohort(args) -> None:
    from vfa.cohort.synth import synth_cohort

    frame = synth_cohort(args.predictions, args.out, hr=args.hr, seed=args.seed, id_col=args.id,
                         threshold=args.threshold, force=args.force)
    print(f"wrote {args.out}: {len(frame)} rows, events {frame['event'].value_counts().sort_index().to_dict()} "
          f"(0 censored, 1 fracture, 2 death); planted HR {args.hr} given age, sex, bmd_tscore, prior_fracture, "
          "glucocorticoids")


def add_synth_cohort(sub) -> None:
    p = sub.add_parser("synth-cohort", help="synthetic follow-up with a known hazard ratio for a predictions file")
    p.add_argument("--predictions", required=True,
                   help="vfa predict / evaluate output: one outcome row is drawn for each of its rows")
    p.add_argument("--out", required=True, help="outcomes CSV to write")
    p.add_argument("--hr", type=float, default=1.85, help="the planted HR of the model's finding (default 1.85)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same file (default 0)")
    p.add_argument("--id", default="image_id", help="join key copied from the predictions (default image_id)")
    p.add_argument("--threshold", type=float, help="finding = raw >= this (default: the 'predicted' column)")
    force_arg(p, "replace --out")
    p.set_defaults(func=cmd_synth_cohort)
