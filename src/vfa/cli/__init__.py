"""`vfa <command>`: a thin layer over the library API (vfa.api, vfa.evaluation, vfa.inference, ...).

The commands live in modules by theme (data_cmds, model_cmds, eval_cmds), each parser beside the
function it calls; this module wires them into one parser and maps user errors to exit code 2."""
from __future__ import annotations

import argparse
import sys

from vfa import config as config_mod
from vfa.cli import data_cmds, eval_cmds, model_cmds, node_cmds, review_cmds, study_cmds

DESCRIPTION = """vfa: vertebral fracture assessment on DXA lateral-spine images with CNNs.

  vfa synth --out DATA --preset cpu-demo          synthetic VFA phantom (train/val/test, norm/frac)
  vfa train --train DATA/train --val DATA/val --out RUN [--preset NAME] [--set key=value ...]
  vfa train --resume RUN                          continue an interrupted run
  vfa import-keras MODEL.h5 --out MODEL.ckpt      the notebook's Keras .h5 -> a vfa checkpoint (no TensorFlow)
  vfa train --init MODEL.ckpt --train ... --out RUN   fine-tune from a checkpoint's weights
  vfa evaluate --model RUN/checkpoints/best.ckpt --data DATA/test --out DIR
  vfa evaluate ... --tta 5 --threshold-from VAL/predictions.csv     CIs, calibration, TTA, report.html
  vfa predict --model CKPT IMAGES... --out predictions.csv [--backend NAME] [--device auto|cpu|cuda]
  vfa export --model CKPT --format onnx --out model.onnx     ONNX, verified against torch
  vfa calibrate --model CKPT --data DATA/val --out calibrated.ckpt [--threshold youden]
  vfa compare A/predictions.csv B/predictions.csv   paired DeLong (AUC) and McNemar (Sn, Sp)
  vfa summary --preset seed2019                   layer table, parameters, FLOPs
  vfa check-data DATA|MANIFEST.csv [--json]       counts, sizes, DICOM syntaxes, duplicates, bad files, verdict
  vfa split MANIFEST.csv --by patient_id --stratify label --ratios 0.7,0.15,0.15 [--folds K]
  vfa heatmap --model CKPT --data DIR --out DIR [--boxes CSV]   Grad-CAM overlays, pointing game
  vfa lr-find --train DIR [--preset NAME] --out DIR                LR range test, suggested rate
  vfa augment-preview --data DIR --preset seed --n 8 --out grid.png
  vfa cv --preset cpu-demo --data MANIFEST.csv --folds 5 --out runs/cv   cross-validation + fold ensemble
  vfa runs list runs/  |  vfa runs compare runs/a runs/b                 runs side by side
  vfa cohort --predictions P.csv --outcomes O.csv --out DIR [--adjust age,sex]   KM, Cox, Fine-Gray, C, kappa
  vfa review --predictions P.csv --db review.sqlite [--heatmaps DIR]   readers' web worklist (docs/review.md)
  vfa review export --db review.sqlite --out reads.csv [--agreement agreement.json]
  vfa node --model CKPT --aet VFA --port 11112 --send-to PACS@HOST:104 --store DIR   DICOM node (docs/node.md)
"""


# in the order `vfa --help` lists them
_COMMANDS = (data_cmds.add_synth, model_cmds.add_train, model_cmds.add_import_keras, eval_cmds.add_evaluate,
             eval_cmds.add_calibrate, eval_cmds.add_compare, eval_cmds.add_predict, model_cmds.add_ensemble,
             model_cmds.add_export,
             data_cmds.add_check_data, data_cmds.add_split, model_cmds.add_summary, eval_cmds.add_heatmap,
             model_cmds.add_lr_find, data_cmds.add_augment_preview, study_cmds.add_cv, study_cmds.add_runs,
             study_cmds.add_cross_vendor, study_cmds.add_cohort, study_cmds.add_synth_cohort, review_cmds.add_review,
             node_cmds.add_node)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vfa", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    for command in sub.choices.values():  # `vfa CMD ... --debug` works as well as `vfa --debug CMD`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    return parser


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, FileExistsError | FileNotFoundError) and exc.strerror:
        where = exc.filename or ""
        return f"{where}: {exc.strerror}" if where else exc.strerror
    return str(exc)


def _quiet_libraries() -> None:
    """Third-party info lines a user cannot act on: Lightning's hardware lines and its advertisement,
    torch's CUDA_HOME note on a machine without CUDA. vfa says what matters itself; warnings still show.
    (Lightning sets its package logger's level when imported, so the loggers that print are set.)"""
    import logging

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    from vfa.io import BadImageError
    from vfa.data.samples import DataError  # torch-free
    from vfa.errors import RunInterrupted, raise_on_signals, received_signal

    # OSError: a missing or existing path, a full disk, a read-only folder, no permission: the
    # machine's state, not a bug, so one line naming the path (atomic writes leave no half file)
    user_errors = (config_mod.ConfigError, DataError, BadImageError, OSError)
    old_handlers = raise_on_signals()
    try:
        try:
            rc = args.func(args)
        except SystemExit:  # a library's own exit after our signal (Lightning's SIGTERM path)
            if received_signal() is None:
                raise
            rc = 0
        if received_signal() is not None:  # the RunInterrupted was swallowed on the way (a finalizer)
            raise RunInterrupted(received_signal())
    except user_errors as exc:
        if args.debug:
            raise
        print(f"vfa {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (RunInterrupted, KeyboardInterrupt) as exc:
        import signal

        signum = getattr(exc, "signum", signal.SIGINT)
        hint = getattr(exc, "hint", "") or "outputs already written are complete (each is written atomically)"
        print(f"vfa {args.command}: stopped by {signal.Signals(signum).name}; {hint}", file=sys.stderr)
        return 128 + int(signum)
    finally:
        import signal

        for s, h in old_handlers.items():
            signal.signal(s, h)
    return int(rc or 0)
