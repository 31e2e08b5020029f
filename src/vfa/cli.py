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
  vfa evaluate --model RUN/checkpoints/best.ckpt --data DATA/test --out DIR
  vfa evaluate ... --tta 5 --threshold-from VAL/predictions.csv     CIs, calibration, TTA, report.html
  vfa predict --model CKPT IMAGES... --out predictions.csv
  vfa calibrate --model CKPT --data DATA/val --out calibrated.ckpt [--threshold youden]
  vfa compare A/predictions.csv B/predictions.csv   paired DeLong (AUC) and McNemar (Sn, Sp)
  vfa summary --preset seed2019                   layer table, parameters, FLOPs
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
    p.add_argument("--batch-size", type=int, default=16)


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
             "seed": args.seed, "grades": args.grades, "bit_depth": args.bit_depth}
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
    cfg = _resolve(args, {"data": {"train": args.train, "val": args.val, "on_bad_file": args.on_bad_file},
                          "optim": {"epochs": args.epochs}})
    run = train(cfg, args.out, force=args.force)
    if args.test and not _secondary():
        from vfa.evaluate import evaluate

        evaluate(run / "checkpoints" / "best.ckpt", args.test, run, metrics_name="test_metrics.json",
                 on_bad_file=cfg.data.on_bad_file, progress=cfg.trainer.progress)
        print(f"held-out test metrics written to {run / 'test_metrics.json'}")


def _secondary() -> bool:
    from vfa.runs import is_secondary_rank

    return is_secondary_rank()


def cmd_evaluate(args) -> None:
    from vfa.evaluate import evaluate

    evaluate(args.model, args.data, args.out, threshold=args.threshold or ("youden" if args.threshold_from else 0.5),
             threshold_from=args.threshold_from, tta=args.tta, tta_preset=args.tta_preset, seed=args.seed,
             score=args.score, id_regex=args.id_regex, on_bad_file=args.on_bad_file, batch_size=args.batch_size,
             force=args.force)
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
                          on_bad_file=args.on_bad_file, progress=True, log=lambda m: print(m, file=sys.stderr))
    atomic_write(Path(args.out), frame.to_csv(index=False))
    skipped = frame.attrs["skipped"]
    print(f"wrote {len(frame)} predictions to {args.out}" + (f"; skipped {len(skipped)}" if skipped else ""))


def cmd_summary(args) -> None:
    from vfa.summary import summary

    print(summary(_resolve(args)))


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
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--force", action="store_true", help="replace an existing phantom in OUT")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a model (Lightning)")
    p.add_argument("--train", help="training folder with norm/ and frac/")
    p.add_argument("--val", help="validation folder with norm/ and frac/")
    p.add_argument("--test", help="optional held-out folder: evaluate best.ckpt there after training")
    p.add_argument("--out", help="run directory")
    p.add_argument("--epochs", type=int)
    p.add_argument("--resume", metavar="RUN", help="continue RUN from checkpoints/last.ckpt")
    p.add_argument("--on-bad-file", choices=("error", "skip"))
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    _config_args(p)
    p.set_defaults(func=cmd_train)

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
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--out", required=True, help="CSV file to write")
    _predict_args(p)
    p.add_argument("--on-bad-file", choices=("error", "skip"), default="skip")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("summary", help="layer table, parameter count and FLOPs of the configured model")
    _config_args(p)
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vfa.data import DataError
    from vfa.io import BadImageError

    user_errors = (config_mod.ConfigError, DataError, BadImageError, FileExistsError, FileNotFoundError,
                   NotADirectoryError)
    try:
        args.func(args)
    except user_errors as exc:
        if args.debug:
            raise
        print(f"vfa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vfa {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
