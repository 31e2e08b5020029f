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
  vfa predict --model CKPT IMAGES... --out predictions.csv
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

    evaluate(args.model, args.data, args.out, threshold=args.threshold, on_bad_file=args.on_bad_file,
             force=args.force)


def cmd_predict(args) -> None:
    import pandas as pd

    from vfa.data import Samples, validate
    from vfa.io import IMAGE_EXTENSIONS
    from vfa.predict import load_model, predict
    from vfa.runs import atomic_write

    paths: list[str] = []
    for item in args.inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.exists():
            paths.append(str(p))
        else:
            import glob

            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no such file, folder or glob match: {item}")
            paths += matches
    if Path(args.out).exists() and not args.force:
        raise FileExistsError(f"{args.out} exists; pass --force to overwrite it")
    samples = validate(Samples(paths, [0] * len(paths), "inputs"), args.on_bad_file)
    for path, reason in samples.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    model = load_model(args.model)
    probs = predict(model, samples.paths, progress=True)
    frame = pd.DataFrame({"image": samples.paths, "p_fracture": probs, "predicted": (probs >= 0.5).astype(int)})
    atomic_write(Path(args.out), frame.to_csv(index=False))
    print(f"wrote {len(frame)} predictions to {args.out}" + (f"; skipped {len(samples.skipped)}" if samples.skipped else ""))


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
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--on-bad-file", choices=("error", "skip"), default="error")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="P(fracture) for unlabeled images")
    p.add_argument("--model", required=True)
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--out", required=True, help="CSV file to write")
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
