"""Argument types and option groups that several `vfa` commands share."""
from __future__ import annotations

import argparse

from vfa import config as config_mod
from vfa.registry import BACKENDS

BATCH_SIZE = 16  # images per forward pass, the same default for every command that runs a model


class _Deprecated(argparse.Action):
    """An old spelling that still works for one release, with a note saying what replaced it."""

    def __init__(self, *args, new: str = "", **kwargs):
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import sys
        print(f"note: {option_string} is deprecated and will be removed; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def deprecated(p: argparse.ArgumentParser, old: str, new: str, dest: str) -> None:
    p.add_argument(old, dest=dest, action=_Deprecated, new=new, help=argparse.SUPPRESS)


def model_args(p: argparse.ArgumentParser) -> None:
    """--device and --batch-size, for every command that runs a model."""
    p.add_argument("--device", default="auto",
                   help="auto (default: the GPU when there is one), cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"images per batch (default {BATCH_SIZE})")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes decoding images (default: the CPU count, capped at 8; 0 for a job of two "
                        "batches or fewer)")


def model_arg(p: argparse.ArgumentParser, ensembles: bool = True) -> None:
    if ensembles:
        p.add_argument("--model", required=True, action="append", metavar="CKPT",
                       help="checkpoint; repeat for an ensemble of several, or give an ensemble file (vfa ensemble)")
    else:
        p.add_argument("--model", required=True, metavar="CKPT", help="checkpoint")


def bad_file_arg(p: argparse.ArgumentParser, default: str | None) -> None:
    """--on-bad-file; default None: the config's data.on_bad_file decides (training)."""
    shown = default or "the config's data.on_bad_file (error)"
    p.add_argument("--on-bad-file", choices=("error", "skip"), default=default,
                   help=f"an unreadable file stops the command (error) or is skipped and reported (skip); "
                        f"default {shown}")


def force_arg(p: argparse.ArgumentParser, what: str = "replace existing outputs") -> None:
    p.add_argument("--force", action="store_true", help=what)


def size_arg(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 600x360, got '{text}'") from None
    return h, w


def floats_arg(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def threshold_arg(text: str) -> str:
    from vfa.stats.accuracy import parse_threshold  # torch-free

    try:
        parse_threshold(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", type=int, default=0, metavar="N",
                   help="test-time augmentation passes (0 = off; the notebook used 5)")
    p.add_argument("--tta-preset", default="auto", choices=("auto", "train", "tta", "tta-keras215"),
                   help="train: the model's own training augmentation; tta: the notebook's (rotation +-20, zoom "
                        "0.9-1.1, channel shift); tta-keras215: as Keras 2.1.5 ran it; auto (default): tta for "
                        "models trained with the notebook's augmentation (seed, keras215), train for others")
    p.add_argument("--seed", type=int, default=0, help="TTA seed (results are deterministic given it)")
    p.add_argument("--score", choices=("raw", "tta_mean", "tta_max"), default="raw",
                   help="score that decides the class (and the flat metrics); tta_* need --tta")
    p.add_argument("--id-regex", help="image ID = first group of this regex on the relative path "
                                      "(replaces the notebook's [16:35] slice); default: the relative path")
    p.add_argument("--id-column", metavar="COL", help="with a manifest: image IDs from this column "
                                                       "(default: the file path)")
    p.add_argument("--backend", default="auto", choices=BACKENDS.names(),
                   help=f"inference backend: {BACKENDS.describe()}")
    model_args(p)


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help=f"one of: {', '.join(config_mod.PRESETS)} (default seed)")
    p.add_argument("--config", help="YAML file of overrides (e.g. a run's config.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override any config key, e.g. --set optim.lr=3e-4 --set trainer.precision=bf16-mixed")


def resolve_config(args, extra: dict | None = None) -> config_mod.Config:
    overrides = config_mod.parse_set(args.set)
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    return config_mod.resolve(args.preset or "seed", args.config, overrides)
