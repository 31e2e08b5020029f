"""`vfa synth --preset clinical [--vendor hologic|lunar|mixed]`: the clinical phantom as a dataset.

The same layout as the default phantom (OUT/{train,val,test}/{norm,frac}/phantom_NNNNN.png or .dcm,
manifest.csv, vertebrae.csv) with a vendor look per image, and vertebrae.csv's optional columns
`readable` (0/1) and `mimic` (none or the mimic's kind). Labels and splits are drawn exactly as the
default phantom draws them; each image has its own child seeds (vendor, fractures, mimics,
visibility, rendering), so image i is the same whatever n and the number of workers.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from vfa.phantom import clinical, vendors
from vfa.phantom.clinical_render import render_clinical
from vfa.phantom.synth import check_draws, make_images, vertebra_rows
from vfa.runs import lock
from vfa.spine import LEVELS

PRESET = "clinical"
STREAM = 27        # the clinical phantom's seeds never meet the default phantom's


@dataclass
class ClinicalConfig:
    n: int = 1000
    prevalence: float = 0.25
    vendor: str = "mixed"                 # hologic | lunar | mixed (each image either, evenly)
    size: tuple[int, int] | None = None   # (H, W); None: the vendor's matrix, drawn per image
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    grades: tuple[float, float, float] = clinical.FRACTURE_GRADES   # per fracture, grade 1/2/3
    bit_depth: int = 8                    # PNG: 8 or 16 (the window's full range); DICOM keeps the vendor's
    format: str = "png"                   # png | dicom (Secondary Capture, the vendor's bits stored)
    workers: int | None = None

    def validate(self) -> None:
        check_draws(self)
        if self.vendor not in vendors.VENDOR_CHOICES:
            raise ValueError(f"vendor must be one of {', '.join(vendors.VENDOR_CHOICES)}, got {self.vendor!r}")
        if self.format not in ("png", "dicom"):
            raise ValueError(f"format must be png or dicom for the clinical phantom, got {self.format!r}")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {self.bit_depth}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 128):
            raise ValueError(f"size must be (H, W) with both >= 128 px, got {self.size}")
        if int(self.seed) < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1 or None, got {self.workers}")


def clinical_config(**given) -> ClinicalConfig:
    """A ClinicalConfig with the given (not None) values on top of the preset's defaults."""
    values = {k: v for k, v in given.items() if v is not None}
    if values.get("size") is not None:
        values["size"] = tuple(values["size"])
    cfg = ClinicalConfig(**values)
    cfg.validate()
    return cfg


def draw_scan(cfg: ClinicalConfig, i: int, label: int) -> dict:
    """Everything about scan i but its pixels: vendor look, fractures, mimics, highest readable level."""
    r_vendor, r_frac, r_mimic, r_vis = (np.random.default_rng(s) for s in
                                        np.random.SeedSequence([cfg.seed, STREAM, i]).spawn(4))
    look = vendors.draw_look(r_vendor, vendors.pick_vendor(r_vendor, cfg.vendor))
    fractures = clinical.sample_clinical_fractures(r_frac, cfg.grades) if label else []
    return dict(look=look, fractures=fractures, mimics=clinical.draw_mimics(r_mimic),
                top=clinical.draw_visibility(r_vis))


def _write_dicom(path: Path, stored: np.ndarray, look: dict, pixel_mm: float, patient_id: str) -> None:
    """Secondary Capture through vfa's writer, then the vendor's bits stored and a window over its range."""
    import pydicom

    from vfa.io.dicom import write_dicom

    bits = 8 if look["bits_stored"] <= 8 else 16
    write_dicom(path, stored.astype(np.uint8 if bits == 8 else np.uint16), bits=bits, patient_id=patient_id,
                pixel_spacing=(pixel_mm, pixel_mm), description=f"vfa clinical phantom, {look['vendor']} look")
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = look["bits_stored"], look["bits_stored"] - 1
    ds.WindowCenter, ds.WindowWidth = look["max_value"] / 2, look["max_value"]
    ds.save_as(path, enforce_file_format=True)


def _make_one(job) -> dict:
    i, label, split, out, cfg = job
    scan = draw_scan(cfg, i, label)
    look = scan["look"]
    size = tuple(cfg.size) if cfg.size else (look["rows"], look["cols"])
    stored, ann = render_clinical(np.random.SeedSequence([cfg.seed, STREAM, i, 1]), size, scan["fractures"],
                                  scan["mimics"], scan["top"], look)
    rel = f"{split}/{'frac' if label else 'norm'}/phantom_{i:05d}.{'png' if cfg.format == 'png' else 'dcm'}"
    if cfg.format == "png":
        Image.fromarray(vendors.to_display(stored, look, cfg.bit_depth)).save(Path(out) / rel, compress_level=1)
    else:
        _write_dicom(Path(out) / rel, stored, look, ann["pixel_mm"], f"PHANTOM-C{i:05d}")
    rows = vertebra_rows(rel, ann)
    for row, readable in zip(rows, ann["readable"]):
        row.update(readable=readable, mimic=ann["mimics"].get(row["level"], "none"))
    fr = sorted(scan["fractures"], key=lambda f: LEVELS.index(f["level"]))
    return dict(_vertebrae=rows, filename=rel, split=split, label=int(label), patient_id=f"P{i:05d}",
                n_fractures=len(fr), max_grade=max([f["grade"] for f in fr], default=0),
                levels=";".join(f["level"] for f in fr), types=";".join(f["type"] for f in fr),
                grades=";".join(str(f["grade"]) for f in fr), boxes=json.dumps(ann["boxes"]),
                fractured_boxes=json.dumps([ann["boxes"][f["level"]] for f in fr]),
                vendor=look["vendor"], height=size[0], width=size[1], pixel_mm=ann["pixel_mm"],
                readable_from=LEVELS[scan["top"]],
                mimics=";".join(f"{lv}:{kind}" for lv, kind in ann["mimics"].items()))


def synthesize_clinical(out: str | Path, cfg: ClinicalConfig, progress: bool = True,
                        force: bool = False) -> pd.DataFrame:
    """Write the clinical phantom (images, vertebrae.csv, then manifest.csv last); returns the manifest."""
    with lock(out):
        out, rows = make_images(out, cfg, force, _make_one, progress, "clinical phantom", max_chunk=8)
        vertebrae = pd.DataFrame([v for row in rows for v in row.pop("_vertebrae")])
        for name, frame, kw in (("vertebrae.csv", vertebrae, dict(float_format="%.2f")),
                                ("manifest.csv", pd.DataFrame(rows), {})):
            frame.to_csv(out / f"{name}.tmp", index=False, **kw)
            os.replace(out / f"{name}.tmp", out / name)
        return pd.DataFrame(rows)
