"""The demo's headline figures as a spread over training seeds, not one trajectory.

For each seed: train the `cpu-demo` preset on the demo phantom (skipped when the run exists), then
what `make demo` does after training: a Youden threshold from validation with 5-pass TTA applied
to the test split, the pointing game of the preset's LayerCAM (and, to check that choice on every
trajectory, of the notebook's last-layer Grad-CAM), TTA with the model's own augmentation versus
the notebook's. Prints a Markdown table (median and range over seeds) and writes seed_spread.json.

    python experiments/seed_spread.py --data runs/spread/data --runs runs/spread --seeds 42 43 44 45 46

Measured on the synthetic phantom: it says how stable the pipeline's figures are, not how a model
does on patient scans.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

VFA = [sys.executable, "-m", "vfa.cli"]


def vfa(*args: str) -> None:
    subprocess.run([*VFA, *args], check=True)


def train(data: Path, run: Path, seed: int) -> None:
    if (run / "test_metrics.json").is_file():
        return
    vfa("train", "--preset", "cpu-demo", "--train", str(data / "train"), "--val", str(data / "val"), "--test",
        str(data / "test"), "--out", str(run), "--force", "--set", f"seed={seed}", "--set", "trainer.progress=false")


def evaluations(data: Path, run: Path) -> None:
    """Validation and test with 5-pass TTA (the model's own augmentation, and the notebook's), the
    test threshold chosen on validation; Grad-CAM on the last feature map of the fractured test images."""
    best = str(run / "checkpoints" / "best.ckpt")
    for preset in ("train", "tta"):
        val, test = run / f"val_{preset}", run / f"test_{preset}"
        if not (test / "metrics.json").is_file():
            vfa("evaluate", "--model", best, "--data", str(data / "val"), "--out", str(val), "--tta", "5",
                "--tta-preset", preset, "--gallery", "0", "--force")
            vfa("evaluate", "--model", best, "--data", str(data / "test"), "--out", str(test), "--tta", "5",
                "--tta-preset", preset, "--threshold-from", str(val / "predictions.csv"), "--gallery", "0", "--force")
    if not (run / "gradcam" / "localization.json").is_file():
        vfa("heatmap", "--model", best, "--data", str(data / "test" / "frac"), "--out", str(run / "gradcam"),
            "--boxes", str(data / "manifest.csv"), "--method", "gradcam", "--target-layer", "auto",
            "--output-stride", "0", "--force")


def grade1_sensitivity(run: Path, data: Path, spec: float = 0.90) -> float:
    """Sensitivity for images whose worst fracture is Genant grade 1, at the raw-score threshold
    where the test split's specificity is `spec`."""
    from vfa.stats.accuracy import choose_threshold

    pred = pd.read_csv(run / "test_predictions.csv")
    manifest = pd.read_csv(data / "manifest.csv")
    grade = dict(zip(manifest["filename"].str.removeprefix("test/"), manifest["max_grade"]))
    thr = choose_threshold(pred["label"], pred["raw"], f"specificity={spec}")
    g1 = pred[pred["file"].map(grade) == 1]
    return float((g1["raw"] >= thr).mean())


def row(run: Path, data: Path, seed: int) -> dict:
    raw = json.loads((run / "test_metrics.json").read_text())
    tta = json.loads((run / "test_train" / "metrics.json").read_text())
    nb = json.loads((run / "test_tta" / "metrics.json").read_text())
    grad = json.loads((run / "gradcam" / "localization.json").read_text())
    loc = tta["localization"]
    s = tta["scores"]
    return {"seed": seed, "auc": raw["auc"], "grade1_sn_at_sp90": grade1_sensitivity(run, data),
            "youden_sn": s["raw"]["sn"], "youden_sp": s["raw"]["sp"],
            "tta_mean_auc": s["tta_mean"]["auc"], "tta_max_sp": s["tta_max"]["sp"],
            "tta_mean_sp": s["tta_mean"]["sp"], "nb_tta_mean_auc": nb["scores"]["tta_mean"]["auc"],
            "nb_tta_max_sp": nb["scores"]["tta_max"]["sp"], "nb_tta_mean_sp": nb["scores"]["tta_mean"]["sp"],
            "layercam_pg": loc["pointing_game"], "layercam_hits": loc["pointing_hits"],
            "gradcam_pg": grad["pointing_game"], "n_fractured": loc["n_fractured"]}


def table(rows: list[dict]) -> str:
    frame = pd.DataFrame(rows)
    names = {"auc": "test AUC (raw)", "grade1_sn_at_sp90": "grade-1 Sn at test Sp 0.90",
             "youden_sn": "Sn, Youden threshold from val", "youden_sp": "Sp, Youden threshold from val",
             "tta_mean_auc": "TTA mean AUC (model's augmentation)", "tta_mean_sp": "TTA mean Sp (model's aug.)",
             "tta_max_sp": "TTA max Sp (model's aug.)", "nb_tta_mean_auc": "TTA mean AUC (notebook's TTA)",
             "nb_tta_mean_sp": "TTA mean Sp (notebook's TTA)", "nb_tta_max_sp": "TTA max Sp (notebook's TTA)",
             "layercam_pg": "pointing game, LayerCAM features.5", "gradcam_pg": "pointing game, last-layer Grad-CAM"}
    lines = [f"| phantom test split, {len(frame)} seeds ({', '.join(map(str, frame['seed']))}) | median | range | "
             "per seed |", "|---|---|---|---|"]
    for key, name in names.items():
        v = frame[key].to_numpy(float)
        lines.append(f"| {name} | {np.median(v):.3f} | {v.min():.3f}–{v.max():.3f} | "
                     f"{' '.join(f'{x:.3f}' for x in v)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the demo phantom (vfa synth --preset cpu-demo)")
    ap.add_argument("--runs", type=Path, required=True, help="folder for seedN run directories")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    ap.add_argument("--no-train", action="store_true", help="only seeds whose run is finished")
    args = ap.parse_args()
    if not (args.data / "manifest.csv").is_file():
        vfa("synth", "--out", str(args.data), "--preset", "cpu-demo")
    rows = []
    for seed in args.seeds:
        run = args.runs / f"seed{seed}"
        if args.no_train and not (run / "test_metrics.json").is_file():
            continue
        train(args.data, run, seed)
        evaluations(args.data, run)
        rows.append(row(run, args.data, seed))
    (args.runs / "seed_spread.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
