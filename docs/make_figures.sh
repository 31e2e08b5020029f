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

# a normal phantom and the same patient with fractures (boxes outlined), at the default 1024x614
.venv/bin/python - <<'PY'
import numpy as np
from PIL import Image, ImageDraw
from vfa.phantom.synth import render_phantom

fractures = [dict(level="T8", grade=2, type="wedge", height_loss=0.32),
             dict(level="L1", grade=3, type="crush", height_loss=0.45)]
normal, _ = render_phantom(np.random.default_rng(7), fractures=[])
frac, ann = render_phantom(np.random.default_rng(7), fractures=fractures)
panel = Image.new("RGB", (normal.shape[1] * 2 + 10, normal.shape[0]), "white")
panel.paste(Image.fromarray(normal).convert("RGB"), (0, 0))
right = Image.fromarray(frac).convert("RGB")
draw = ImageDraw.Draw(right)
for f in fractures:
    x0, y0, x1, y1 = ann["boxes"][f["level"]]
    draw.rectangle([x0 - 3, y0 - 3, x1 + 3, y1 + 3], outline=(255, 60, 60), width=3)
    draw.text((x1 + 8, y0), f"{f['level']} grade {f['grade']} {f['type']}", fill=(255, 80, 80))
panel.paste(right, (normal.shape[1] + 10, 0))
panel.resize((panel.width // 2, panel.height // 2), Image.LANCZOS).save("docs/phantom.png")
PY
