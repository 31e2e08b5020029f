"""Argument types and option groups that several `vfa` commands share."""
from __future__ import annotations

import argparse

from vfa import config as config_mod


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
    p.add_argument("--backend", default="auto",
                   choices=("auto", "torch", "torch-bf16", "compile", "onnxruntime", "onnxruntime-int8"),
                   help="inference backend (vfa.inference): auto = compile (bf16, cached kernels) for 256+ "
                        "images, else torch fp32; torch-bf16; onnxruntime (exported once, cached); "
                        "onnxruntime-int8 (quantized, calibrated on up to 32 of the images, checked within "
                        "0.02 on up to 32 others)")


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
