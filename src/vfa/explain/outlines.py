"""Per-vertebra overlays as a reader knows them: each body's outline through its six points,
coloured by Genant grade, with its level and reading beside it."""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw


# grade 0 green, 1 yellow, 2 orange, 3 red: the traffic-light order readers use
GRADE_COLOURS = {0: (60, 200, 90), 1: (250, 220, 40), 2: (255, 140, 20), 3: (235, 40, 40)}
OUTLINE = ("sup_ant", "sup_mid", "sup_post", "inf_post", "inf_mid", "inf_ant")


def outline(row) -> list[tuple[float, float]]:
    """The body's outline polygon: the superior end plate anterior to posterior, then the inferior
    end plate back (the order DICOM SR regions and the review app use)."""
    return [(float(row[f"{p}_x"]), float(row[f"{p}_y"])) for p in OUTLINE]


def draw_spine(gray: np.ndarray, rows: pd.DataFrame, scale: int = 2) -> Image.Image:
    """`gray` (H, W) in [0, 1] with each row's outline and label, drawn at `scale` x its size so thin
    lines and labels stay legible on small images."""
    base = Image.fromarray((np.clip(gray, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    img = base.resize((base.width * scale, base.height * scale), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _, r in rows.iterrows():
        grade = int(r.get("grade", 0))
        colour = GRADE_COLOURS.get(grade, (255, 255, 255))
        poly = [(x * scale, y * scale) for x, y in outline(r)]
        draw.line(poly + poly[:1], fill=colour, width=max(1, scale))
        kind = str(r.get("type", ""))
        text = f"{r['level']}" + (f" G{grade} {kind}" if grade > 0 else "")
        x = max(px for px, _ in poly) + 3 * scale
        y = sum(py for _, py in poly) / len(poly) - 5
        draw.text((x, y), text, fill=colour)
    return img




def write_outlines(model, paths: list[str], out, root=None, batch_size: int = 8, force: bool = False,
                   keep_identifiers: bool = False, progress: bool = True, log=print) -> dict:
    """`vfa heatmap` for a per-vertebra model: an outline overlay per image under `out` (mirroring
    its folders below `root`, named as the image with .png) and vertebrae.csv of every body read.
    Returns {"written", "skipped_existing" (0: every overlay is drawn again), "vertebrae"}."""
    from pathlib import Path

    from vfa.data.transforms import create_transform
    from vfa.inference.engine import public_files
    from vfa.inference.vertebra import read_spines
    from vfa.runs import atomic_write, mark

    out = Path(out)
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
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        draw_spine(transform.read(p), rows).save(tmp, format="PNG")
        tmp.replace(target)
    files = public_files(paths, keep_identifiers)
    vert = pd.concat([s.assign(file=f) for s, f in zip(spines, files)], ignore_index=True)
    atomic_write(table, vert.to_csv(index=False, float_format="%.3f"))
    log(f"{len(paths)} per-vertebra overlays and {len(vert)} vertebrae -> {out}")
    return {"written": len(paths), "skipped_existing": 0, "vertebrae": len(vert)}
