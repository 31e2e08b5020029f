"""Model commands: train, import-keras, export, summary, lr-find (each parser beside its command)."""
from __future__ import annotations

from pathlib import Path

from vfa import config as config_mod
from vfa.cli.options import _config_args, _resolve, _size


def _secondary() -> bool:
    from vfa.runs import is_secondary_rank

    return is_secondary_rank()


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


def add_train(sub) -> None:
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


def cmd_import_keras(args) -> None:
    from vfa.keras_import import import_keras

    import_keras(args.h5, args.out, size=args.size, bn_after_relu=args.bn_after_relu or None, force=args.force)


def add_import_keras(sub) -> None:
    p = sub.add_parser("import-keras", help="convert the notebook's Keras .h5 (model or weights) to a vfa checkpoint")
    p.add_argument("h5", help="a Keras 2.x .h5 from model.save or model.save_weights (read with h5py; no code runs)")
    p.add_argument("--out", required=True, help="the vfa checkpoint to write (e.g. MODEL.ckpt)")
    p.add_argument("--size", type=_size, help="input HxW (default: the model's fixed input size, else 600x360)")
    p.add_argument("--bn-after-relu", action="store_true",
                   help="weights-only file whose head BatchNormalization followed the ReLU (a full model's config says so itself)")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(func=cmd_import_keras)


def cmd_export(args) -> None:
    from vfa.export import export_onnx

    calibration = None
    if args.format == "onnx-int8":
        if not args.calibration:
            raise config_mod.ConfigError("--format onnx-int8 needs --calibration DATA (images like those it will see)")
        from vfa.predict import expand_inputs
        calibration = expand_inputs([args.calibration])
    res = export_onnx(args.model, args.out, batch=args.batch, opset=args.opset, force=args.force,
                      int8_calibration=calibration)
    print(f"wrote {res['path']} (opset {res['opset']}, input {res['input']}); onnxruntime vs torch fp32: "
          f"max |delta p| = {res['max_abs_dp']:.1e}"
          + (f"; int8: calibrated on {res['calibration_images']} images, max |delta p| = "
             f"{res['int8_max_abs_dp']:.1e} on {res['int8_check_images']} others" if res.get("int8") else ""))


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX, verified against torch (max |delta p| <= 1e-4)")
    p.add_argument("--model", required=True, help="vfa checkpoint")
    p.add_argument("--format", choices=("onnx", "onnx-int8"), default="onnx",
                   help="onnx-int8: static int8 quantization (onnxruntime), kept only within 0.02 of fp32")
    p.add_argument("--calibration", metavar="DATA", help="onnx-int8: folder, file list or manifest of images "
                                                         "like those the model will see (up to 64, evenly spaced: half calibrate, half check)")
    p.add_argument("--out", required=True, help="file to write, e.g. model.onnx (batch size is dynamic)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--batch", type=int, default=2, help="batch of random images used to trace and verify")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_export)


def cmd_summary(args) -> None:
    from vfa.summary import summary

    print(summary(_resolve(args)))


def add_summary(sub) -> None:
    p = sub.add_parser("summary", help="layer table, parameter count and FLOPs of the configured model")
    _config_args(p)
    p.set_defaults(func=cmd_summary)


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


def add_lr_find(sub) -> None:
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
