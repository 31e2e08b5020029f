"""docs/clinical_montage.png: the clinical phantom (vfa synth --preset clinical), both vendor looks,
a normal and a fractured scan each, with fractures, mimics and unreadable levels labelled.

    .venv/bin/python docs/make_clinical_montage.py [--out docs/clinical_montage.png]

The scans are the generator's own (seed 0), the first ones of each vendor that show what the figure
is for: a normal scan with at least two mimics, a fractured one with a mimic, and at least one scan
whose upper thoracic levels the shoulders hide.
"""
from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vfa.phantom import clinical, vendors  # noqa: E402
from vfa.phantom.clinical_render import render_clinical  # noqa: E402
from vfa.phantom.clinical_synth import STREAM, clinical_config, draw_scan  # noqa: E402
from vfa.spine import LEVELS  # noqa: E402

ORDER = [0, 1, 2, 5, 4, 3]   # the six points (sup ant, mid, post; inf ant, mid, post) as an outline


USED: set[int] = set()


def pick(vendor: str, label: int, want_hidden: bool, seed: int = 0) -> tuple[int, dict]:
    cfg = clinical_config(vendor=vendor, seed=seed)
    for i in range(2000):
        if i in USED:
            continue
        s = draw_scan(cfg, i, label)
        kinds = {m["kind"] for m in clinical.kept_mimics(s["mimics"], s["fractures"]).values()}
        if len(kinds) >= (1 if label else 2) and (s["top"] > 0) == want_hidden:
            USED.add(i)
            return i, s
    raise RuntimeError("no scan fits")


def panel(ax, vendor: str, label: int, want_hidden: bool) -> None:
    i, s = pick(vendor, label, want_hidden)
    look = s["look"]
    img, ann = render_clinical(np.random.SeedSequence([0, STREAM, i, 1]), (look["rows"], look["cols"]),
                               s["fractures"], s["mimics"], s["top"], look)
    ax.imshow(vendors.to_display(img, look), cmap="gray", vmin=0, vmax=255)
    broken = {f["level"]: f for f in ann["fractures"]}
    for k, lv in enumerate(LEVELS):
        pts = np.asarray(ann["points"][lv])[ORDER]
        x, y = pts[:, 0].min(), pts[:, 1].mean()
        if lv in broken:
            f = broken[lv]
            color, text = "red", f"{lv} grade {f['grade']} {f['type']}"
        elif lv in ann["mimics"]:
            color, text = "gold", f"{lv} mimic: {ann['mimics'][lv].replace('_', ' ')}"
        elif not ann["readable"][k]:
            color, text = "deepskyblue", f"{lv} not readable"
        else:
            continue
        ax.fill(pts[:, 0], pts[:, 1], fill=False, edgecolor=color, linewidth=0.8)
        ax.text(x - 12, y, text, color=color, fontsize=6.5, ha="right", va="center")
    title = f"{vendor}, {'fractured' if label else 'normal'}: {img.shape[0]}x{img.shape[1]}, " \
            f"{look['bits_stored']}-bit, {look['lp_mm']:.2f} lp/mm"
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/clinical_montage.png")
    args = ap.parse_args()
    fig, axes = plt.subplots(1, 4, figsize=(12, 6))
    for ax, (vendor, label, hidden) in zip(axes, [("hologic", 0, True), ("hologic", 1, False),
                                                  ("lunar", 0, False), ("lunar", 1, True)]):
        panel(ax, vendor, label, hidden)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
