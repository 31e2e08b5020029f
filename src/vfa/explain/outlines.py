"""Per-vertebra overlays as a reader knows them: each body's outline through its six points,
coloured by Genant grade, with its level and reading beside it; a body the reader reports not
evaluable (`evaluable` 0, grade empty) gray and dashed, labelled "n/e" (drawn by
vfa.spine.draw_outlines, the drawer the DICOM Secondary Captures use too)."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
from PIL import Image

from vfa.spine import draw_outlines


def draw_spine(gray: np.ndarray, rows: pd.DataFrame, scale: int = 2) -> Image.Image:
    """`gray` (H, W) in [0, 1] with each row's outline and label, drawn at `scale` x its size so thin
    lines and labels stay legible on small images."""
    base = Image.fromarray((np.clip(gray, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    img = base.resize((base.width * scale, base.height * scale), Image.BILINEAR)
    return draw_outlines(img, rows, scale)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_outlines(model, paths: list[str], out, root=None, batch_size: int = 8, force: bool = False,
                   keep_identifiers: bool = False, progress: bool = True, log=print, **refused) -> dict:
    """The per-vertebra family's heatmap step (`vfa heatmap`): an outline overlay per image under
    `out` (mirroring its folders below `root`, named as the image with .png) and vertebrae.csv of
    every body read. Returns {"written", "skipped_existing" (0: every overlay is drawn again),
    "vertebrae"}. `refused`: the CAM options, refused when set before this is called."""
    from pathlib import Path

    from vfa.explain.cam import members_of

    from vfa.data.transforms import create_transform
    from vfa.inference.engine import public_files
    from vfa.inference.vertebra import read_spines
    from vfa.runs import atomic_write, mark

    model, out = members_of(model)[0], Path(out)
    table = out / "vertebrae.csv"
    if table.exists() and not force:
        raise FileExistsError(f"{table} exists; pass --force to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "heatmap")
    spines = read_spines(model, paths, batch_size, progress)
    transform = create_transform(model.config, channels=1)
    rels = [Path(p).relative_to(root) if root and Path(p).is_relative_to(root) else Path(Path(p).name) for p in paths]
    names = public_files([r.with_suffix(".png") for r in rels], keep_identifiers)
    for p, name, rows in zip(paths, names, spines):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out / name, png(draw_spine(transform.read(p), rows)))
    files = public_files(paths, keep_identifiers)
    vert = pd.concat([s.assign(file=f) for s, f in zip(spines, files)], ignore_index=True)
    atomic_write(table, vert.to_csv(index=False, float_format="%.3f"))
    log(f"{len(paths)} per-vertebra overlays and {len(vert)} vertebrae -> {out}")
    return {"written": len(paths), "skipped_existing": 0, "vertebrae": len(vert)}
