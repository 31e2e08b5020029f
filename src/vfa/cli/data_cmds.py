"""Dataset commands: synth, check-data, split, augment-preview (each parser beside its command)."""
from __future__ import annotations

import argparse
import sys

from vfa.cli.options import bad_file_arg, floats_arg, force_arg, size_arg


def _clinical_preset(name: str | None) -> dict | None:
    """A training preset's phantom defaults where they draw the clinical phantom (e.g. clinical-demo), else None."""
    from vfa.presets import PRESETS

    synth = PRESETS.get(name, {}).get("synth", {}) if name else {}
    return {k: v for k, v in synth.items() if k != "phantom"} if synth.get("phantom") == "clinical" else None


def _synth_clinical(args) -> None:
    """`vfa synth --preset clinical [--vendor ...]`: the clinical phantom (vfa.phantom.clinical_synth)."""
    from vfa.config import ConfigError
    from vfa.phantom.clinical_synth import PRESET, clinical_config, synthesize_clinical

    defaults = _clinical_preset(args.preset) or {}
    if (args.preset not in (None, PRESET) and not defaults) or args.settle is not None:
        raise ConfigError(f"--vendor goes with --preset {PRESET} or a preset that trains on it (which have no "
                          f"--settle), got --preset {args.preset}")
    given = dict(n=args.n, prevalence=args.prevalence, size=args.size, splits=args.splits, seed=args.seed,
                 grades=args.grades, bit_depth=args.bit_depth, format=args.format, vendor=args.vendor)
    try:
        cfg = clinical_config(**{**defaults, **{k: v for k, v in given.items() if v is not None}})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"phantom: {exc}") from None
    frame = synthesize_clinical(args.out, cfg, force=args.force)
    counts = frame.groupby(["split", "vendor", "label"]).size().unstack(fill_value=0)
    print(f"wrote {len(frame)} clinical phantom images to {args.out} (manifest.csv, vertebrae.csv)\n"
          f"{counts.to_string()}")


def cmd_synth(args) -> None:
    if args.preset == "clinical" or args.vendor or _clinical_preset(args.preset) is not None:
        return _synth_clinical(args)
    from vfa.phantom.synth import phantom_config, synthesize

    cfg = phantom_config(args.preset, n=args.n, prevalence=args.prevalence, size=args.size, splits=args.splits,
                         seed=args.seed, grades=args.grades, bit_depth=args.bit_depth, format=args.format,
                         settle=args.settle)
    frame = synthesize(args.out, cfg, force=args.force)
    counts = frame.groupby(["split", "label"]).size().unstack(fill_value=0)
    print(f"wrote {len(frame)} phantom images to {args.out} (manifest.csv)\n{counts.to_string()}")


def add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic VFA phantom dataset")
    p.add_argument("--out", required=True, help="output folder (OUT/{train,val,test}/{norm,frac}, manifest.csv)")
    p.add_argument("--preset", help="take phantom defaults from a training preset (e.g. cpu-demo); clinical: "
                                    "two vendor looks, shoulders, mimics and readability (docs/phantom.md)")
    p.add_argument("--vendor", choices=("hologic", "lunar", "mixed"),
                   help="the clinical phantom's device look (default mixed: either, evenly)")
    p.add_argument("--n", type=int, help="number of images (default 1000)")
    p.add_argument("--prevalence", type=float, help="share of fractured images (default 0.25)")
    p.add_argument("--size", type=size_arg, help="HxW (default 1024x614; clinical: the vendor's matrix per image)")
    p.add_argument("--splits", type=floats_arg, help="train,val,test shares (default 0.7,0.15,0.15)")
    p.add_argument("--grades", type=floats_arg,
                   help="shares of Genant grade 1,2,3 among positives (default 0.4,0.4,0.2)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), help="PNG bit depth (default 8)")
    p.add_argument("--format", choices=("png", "dicom", "dicom-mono1"),
                   help="png (default); dicom: MONOCHROME2 .dcm files with fake identifiers; dicom-mono1: MONOCHROME1")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--settle", action=argparse.BooleanOptionalAction, default=None,
                   help="the spine settles onto collapsed bodies (default); --no-settle: the earlier phantom, "
                        "whose disc spaces next to a collapse widen (docs/phantom.md)")
    p.add_argument("--force", action="store_true", help="replace an existing phantom in OUT")
    p.set_defaults(func=cmd_synth)


def cmd_check_data(args) -> int:
    import json

    from vfa.data.check import check_data, format_report

    rep = check_data(args.data, tuple(args.classes.split(",")), frame=args.frame, workers=args.workers,
                     keep_identifiers=args.keep_identifiers)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0 if rep["ready"] else 1


def add_check_data(sub) -> None:
    p = sub.add_parser("check-data",
                       help="one pass over a dataset: counts, sizes, formats, duplicates, bad files, verdict")
    p.add_argument("data", help="class folder, folder of split folders (train/val/test), or manifest CSV[:SPLIT]")
    p.add_argument("--classes", default="norm,frac", help="class names, label 0 first (default norm,frac)")
    p.add_argument("--frame", type=int, metavar="K", help="read frame K of multi-frame files (default: refuse them)")
    p.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep-identifiers", action="store_true",
                   help="include DICOM PatientID, PatientName, dates and UIDs in the JSON (default: never)")
    p.set_defaults(func=cmd_check_data)


def cmd_split(args) -> None:
    from vfa.data.split import format_summary, run_split, summary

    by = args.by
    strat = None if args.stratify in ("", "none") else args.stratify
    out, frame = run_split(args.manifest, args.out, by, strat, args.ratios, args.folds, args.seed, args.force)
    print(format_summary(summary(frame, by, strat)))
    if args.folds:
        print(format_summary(summary(frame[frame["split"] != "test"], by, strat, "fold")))
    print(f"wrote {out} ({len(frame)} rows; no {by} in two splits)")


def add_split(sub) -> None:
    p = sub.add_parser("split", help="patient-level stratified train/val/test split (or folds) of a manifest")
    p.add_argument("manifest", help="CSV with path,label,patient_id,...")
    p.add_argument("--by", default="patient_id", help="group column: no value is in two splits (default patient_id)")
    p.add_argument("--stratify", default="label", help="column to balance across splits, or none (default label)")
    p.add_argument("--ratios", type=floats_arg, default=(0.7, 0.15, 0.15),
                   help="train,val,test shares (default 0.7,0.15,0.15); with --folds the last is the test share")
    p.add_argument("--folds", type=int, metavar="K",
                   help="K cross-validation folds (a 'fold' column) over non-test rows")
    p.add_argument("--seed", type=int, default=0, help="seed of the group shuffle (default 0)")
    p.add_argument("--out", help="CSV to write (default MANIFEST_split.csv beside it; the input is never changed)")
    force_arg(p, "replace --out")
    p.set_defaults(func=cmd_split)


def cmd_augment_preview(args) -> None:
    from vfa.data.preview import augment_preview

    drawn = augment_preview(args.data, args.out, args.preset, args.n, args.images, args.seed, args.size, args.force,
                            args.on_bad_file, log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {args.out}: {args.images} image(s) x {args.n} augmented versions ({len(drawn)} draws)")


def add_augment_preview(sub) -> None:
    p = sub.add_parser("augment-preview", help="grid of augmented versions of training images, labelled")
    p.add_argument("--data", required=True, help="folder (its frac/ first), image file or glob")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--preset", default="seed",
                   help="training preset (seed, keras215, cpu-demo, ...) or augmentation preset (tta, none, ...)")
    p.add_argument("--n", type=int, default=8, help="augmented versions per image")
    p.add_argument("--images", type=int, default=1, help="number of images (rows)")
    p.add_argument("--size", type=size_arg, help="HxW (default: the preset's input size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the images chosen and of the augmentation draws")
    bad_file_arg(p, "error")
    force_arg(p, "replace --out")
    p.set_defaults(func=cmd_augment_preview)
