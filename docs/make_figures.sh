#!/usr/bin/env bash
# Regenerate the README's heatmap, LR-finder and augmentation figures with vfa itself.
#   PHANTOM  a phantom written by `vfa synth` (needs train/, test/ and manifest.csv)
#   CKPT     a trained checkpoint (the demo's: `make demo`)
# Usage: docs/make_figures.sh            (defaults: the demo's phantom and model)
#        PHANTOM=data/small CKPT=runs/small/checkpoints/best.ckpt docs/make_figures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PHANTOM=${PHANTOM:-runs/demo-data}
CKPT=${CKPT:-runs/demo/checkpoints/best.ckpt}
PRESET=${PRESET:-cpu-demo}       # architecture and input size for the LR range test
LR_STEPS=${LR_STEPS:-100}
VFA=${VFA:-.venv/bin/vfa}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# Grad-CAM gallery (true positives, false positives, false negatives of the test split), as in report.html
$VFA evaluate --model "$CKPT" --data "$PHANTOM/test" --out "$TMP/eval" --gallery 4
cp "$TMP/eval/heatmap_gallery.png" docs/heatmaps.png

# LR range test on a fresh copy of the preset's model, on the training split, without augmentation (as the notebook)
$VFA lr-find --preset "$PRESET" --train "$PHANTOM/train" --out "$TMP/lr" --steps "$LR_STEPS" --set augment=none
cp "$TMP/lr/lr_find.png" docs/lr_find.png

# the notebook's augmentation check: two training images, six augmented versions each
$VFA augment-preview --data "$PHANTOM/train" --preset seed --n 6 --images 2 --out docs/augment_preview.png --force
