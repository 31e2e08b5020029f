"""Model commands: train, import-keras, export, summary, lr-find (each parser beside its command)."""
from __future__ import annotations


from vfa import config as config_mod
from vfa.cli.options import bad_file_arg, config_args, force_arg, resolve_config, size_arg


def cmd_train(args) -> None:
    from vfa import api

    if args.resume:
        api.resume(args.resume, config_mod.parse_set(args.set), epochs=args.epochs)
        return
    if not args.out:
        raise config_mod.ConfigError("--out RUN is required (or --resume RUN)")
    cfg = resolve_config(args, {"data": {"train": args.train, "val": args.val, "test": args.test,
                                   "on_bad_file": args.on_bad_file},
                          "optim": {"epochs": args.epochs}, "model": {"init_from": args.init},
                          "trainer": trainer_device(args.device)})
    api.train(cfg, args.out, force=args.force)


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (Lightning)")
    p.add_argument("--train", help="training folder with norm/ and frac/, or a manifest CSV (its 'train' split)")
    p.add_argument("--val", help="validation folder with norm/ and frac/, or a manifest CSV (its 'val' split; "
                                 "default: the --train manifest's)")
    p.add_argument("--test", help="optional held-out folder or manifest: checked for leakage before training, "
                                  "best.ckpt evaluated there after")
    p.add_argument("--out", help="run directory")
    p.add_argument("--epochs", type=int, help="epochs to train (default: the preset's optim.epochs). The SGDR "
                                              "schedule keeps its own cycle (optim.sgdr_steps): --epochs 2 trains "
                                              "the cycle's first 2 epochs; --set optim.sgdr_steps=N changes it")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from checkpoints/last.ckpt")
    p.add_argument("--init", metavar="CKPT", help="start from this vfa checkpoint's weights (e.g. from "
                                                  "vfa import-keras); its architecture replaces the preset's")
    bad_file_arg(p, None)
    p.add_argument("--device", default="auto",
                   help="auto (default: the config's trainer.accelerator, itself auto: the GPU when there is one), "
                        "cpu, cuda, cuda:N or mps; several GPUs or nodes: --set trainer.devices=N (docs/scaling.md)")
    force_arg(p, "replace an existing run directory")
    config_args(p)
    p.set_defaults(func=cmd_train)


def cmd_import_keras(args) -> None:
    from vfa.models.keras.importer import import_keras

    model, _ = import_keras(args.h5, args.out, size=args.size, bn_after_relu=args.bn_after_relu or None,
                            force=args.force)
    if args.out and not args.no_engine:
        from vfa.inference.backends import prepare_fp32_engine

        prepare_fp32_engine(model)


def add_import_keras(sub) -> None:
    p = sub.add_parser("import-keras", help="convert the notebook's Keras .h5 (model or weights) to a vfa checkpoint")
    p.add_argument("h5", help="a Keras 2.x .h5 from model.save or model.save_weights (read with h5py; no code runs)")
    p.add_argument("--out", required=True, help="the vfa checkpoint to write (e.g. MODEL.ckpt)")
    p.add_argument("--size", type=size_arg, help="input HxW (default: the model's fixed input size, else 600x360)")
    p.add_argument("--bn-after-relu", action="store_true",
                   help="weights-only file whose head BatchNormalization followed the ReLU (a full model's config "
                        "says so itself)")
    p.add_argument("--no-engine", action="store_true",
                   help="skip exporting the model to its cached onnxruntime fp32 engine (predict's fast exact path)")
    force_arg(p, "replace --out")
    p.set_defaults(func=cmd_import_keras)


def cmd_export(args) -> None:
    from vfa.inference.ensemble import is_ensemble_file
    from vfa.inference.export import export_onnx

    if len(args.model) > 1 or is_ensemble_file(args.model[0]):
        raise config_mod.ConfigError("vfa export writes one network: export each member of an ensemble on its own "
                                     "(vfa export --model MEMBER.ckpt --out MEMBER.onnx); the ensemble file lists them")
    args.model = args.model[0]
    calibration = None
    if args.format == "onnx-int8":
        if not args.calibration:
            raise config_mod.ConfigError("--format onnx-int8 needs --calibration DATA (images like those it will see)")
        from vfa.inference.export import calibration_images
        calibration = calibration_images([args.calibration], args.on_bad_file)
    res = export_onnx(args.model, args.out, batch=args.batch, opset=args.opset, force=args.force,
                      int8_calibration=calibration)
    print(f"wrote {res['path']} (opset {res['opset']}, input {res['input']}); onnxruntime vs torch fp32: "
          f"max |delta p| = {res['max_abs_dp']:.1e}"
          + (f"; int8: calibrated on {res['calibration_images']} images, max |delta p| = "
             f"{res['int8_max_abs_dp']:.1e} on {res['int8_check_images']} others" if res.get("int8") else ""))


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX, verified against torch (max |delta p| <= 1e-4)")
    p.add_argument("--model", required=True, action="append", help="vfa checkpoint (one; ensembles: each member)")
    p.add_argument("--format", choices=("onnx", "onnx-int8"), default="onnx",
                   help="onnx-int8: static int8 quantization (onnxruntime), kept only within 0.02 of fp32")
    p.add_argument("--calibration", metavar="DATA", help="onnx-int8: folder, file list or manifest of images "
                                                         "like those the model will see (up to 64, evenly spaced: "
                                                         "half calibrate, half check)")
    p.add_argument("--out", required=True, help="file to write, e.g. model.onnx (batch size is dynamic)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--batch", type=int, default=2, help="batch of random images used to trace and verify")
    bad_file_arg(p, "error")
    force_arg(p, "replace --out")
    p.set_defaults(func=cmd_export)


def cmd_ensemble(args) -> None:
    from vfa.inference.ensemble import write_ensemble

    out = write_ensemble(args.model, args.out, combine=args.combine, force=args.force)
    print(f"wrote {out}: {len(args.model)} members, combined by {args.combine}; choose its threshold with "
          f"vfa calibrate --model {out} --data VAL --out CALIBRATED.yaml --threshold youden")


def add_ensemble(sub) -> None:
    from vfa.inference.ensemble import COMBINE

    p = sub.add_parser("ensemble", help="an ensemble file of several checkpoints (by path and sha256), usable "
                                        "wherever --model is")
    p.add_argument("--model", required=True, action="append", metavar="CKPT", help="a member; repeat for each")
    p.add_argument("--combine", choices=tuple(COMBINE), default="mean",
                   help="how members' P(fracture) combine (default mean; with TTA, over members x passes)")
    p.add_argument("--out", required=True, help="ensemble file to write (.yaml)")
    force_arg(p, "replace --out")
    p.set_defaults(func=cmd_ensemble)


def cmd_summary(args) -> None:
    from vfa.models.summary import summary

    print(summary(resolve_config(args)))


def add_summary(sub) -> None:
    p = sub.add_parser("summary", help="layer table, parameter count and FLOPs of the configured model")
    config_args(p)
    p.set_defaults(func=cmd_summary)


def cmd_lr_find(args) -> None:
    from vfa.training.lr_find import lr_find

    device = {"data": {"on_bad_file": args.on_bad_file}}
    if accelerator(args.device):
        device["trainer"] = {"accelerator": accelerator(args.device)}
    if args.model:  # its config, with --set on top; the file is only read: the sweep trains a copy
        cfg = None
        overrides = config_mod.merged_dict(config_mod.parse_set(args.set), device)
    else:
        cfg, overrides = resolve_config(args, device), None
    lr_find(cfg, args.train, args.out, model=args.model, overrides=overrides, min_lr=args.min_lr,
            max_lr=args.max_lr, steps=args.steps, per_epoch=args.per_epoch, early_stop=args.early_stop or None,
            beta=args.beta, force=args.force)
    print(f"wrote lr_find.png, lr_find.json and lr_find.csv to {args.out}")


def add_lr_find(sub) -> None:
    p = sub.add_parser("lr-find", help="learning-rate range test on a copy of the model")
    p.add_argument("--train", required=True, help="class folders norm/ and frac/ (a small sample is enough)")
    p.add_argument("--out", required=True, help="folder for lr_find.png, lr_find.json, lr_find.csv")
    p.add_argument("--model", help="start from this checkpoint's weights and config (the file is only read)")
    p.add_argument("--min-lr", type=float, help="first rate (default 1e-7; 1e-10 with --per-epoch)")
    p.add_argument("--max-lr", type=float, default=1.0, help="last rate (default 1.0)")
    p.add_argument("--steps", type=int, help="number of rates (default 100 steps; 50 epochs with --per-epoch)")
    p.add_argument("--per-epoch", action="store_true",
                   help="the notebook's variant: one rate per epoch over the whole folder, 1e-10*10^arange(0,10,10/N)")
    p.add_argument("--early-stop", type=float, default=4.0,
                   help="stop when the smoothed loss exceeds this times its best (0: never)")
    p.add_argument("--beta", type=float, help="loss smoothing (default 0.98; 0.8 with --per-epoch; 0: none)")
    p.add_argument("--device", default="auto", help="auto (default: the GPU when there is one), cpu, cuda or mps")
    bad_file_arg(p, "error")
    force_arg(p, "replace --out")
    config_args(p)
    p.set_defaults(func=cmd_lr_find)


def trainer_device(device: str | None) -> dict:
    """--device -> trainer.accelerator (and devices for cuda:N); auto leaves the config's own."""
    acc = accelerator(device)
    if acc is None:
        return {}
    return {"accelerator": acc, **({"devices": [int(device.split(":")[1])]} if ":" in device else {})}


def accelerator(device: str | None) -> str | None:
    """--device (as for inference) -> Lightning's accelerator for training-like commands."""
    if device in (None, "auto"):
        return None
    if device.startswith("cuda"):
        return "gpu"
    return device
