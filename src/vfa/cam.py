"""Grad-CAM heatmaps, the notebook's overlays, and how well they point at the fractured vertebrae.

The notebook took the gradient of P(fracture) with respect to the Inception-ResNet-v2 base's
1536-channel output, averaged it over space into channel weights, weighted the feature map,
averaged over channels, applied ReLU, divided by the maximum, resized the map to the original
image, coloured it with JET and blended `0.3 * heatmap + 0.7 * image`. That base output is what
timm's `forward_features` returns for every backbone, so it is the default target here
(`layer=None`); any named module can be chosen instead (`layer="backbone.layer3"`).

We differentiate the logit, not the probability: dp/dA = p(1-p) * dlogit/dA, a positive factor
per image that the division by the maximum cancels, so Grad-CAM maps are the notebook's exactly.
Grad-CAM++ (Chattopadhay et al. 2018) is the `method="gradcam++"` option. LayerCAM (Jiang et al.
2021) weights each cell by its own positive gradient instead of the channel mean, so it works on
earlier, finer layers; a model's config can make it its default (`model.cam_method`, `cam_layer`).

Why not a library: `grad-cam` (pytorch_grad_cam 1.5) requires opencv-python-headless (a 61 MB
binary wheel) and ttach, only to do what the ~40 lines below do; MONAI's CAMs min-max normalise
and resize to the network input, not the notebook's ReLU / max and resize to the original image.
Both hook named modules only, while the notebook's target is the output of `forward_features`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vfa.config import CAM_METHODS as METHODS
from vfa.config import ConfigError
from vfa.io import read_image
from vfa.runs import atomic_write

_DONE = re.compile(r"^(heatmap|panel)_\d{3}_")
CSV_FIELDS = ("file", "p_fracture", "heatmap", "label", "n_boxes", "pointing_hit", "pointing_hit_tol", "mass_in_boxes")


from vfa.cam_geometry import (_activations, _as_nchw, cam_network, cell_centres, dense_model,  # noqa: F401
                              resolve_layer, upsample)
from vfa.localization import (POINTING_TOLERANCE_PX, box_mask, find_manifest, localize, read_manifest,  # noqa: F401
                              summarize)


# --- the map -----------------------------------------------------------------------------------

METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM", "layercam": "LayerCAM"}


def cam_settings(model, method: str | None = None, layer: str | None = None) -> tuple[str, str]:
    """(method, layer): None picks the model's own `model.cam_method` / `model.cam_layer` (the
    notebook's Grad-CAM on the last feature map unless its preset says otherwise); layer "auto" is
    the last feature map whatever the model's default."""
    mc = getattr(getattr(model, "config", None), "model", None)
    method = method or getattr(mc, "cam_method", "gradcam")
    if method not in METHODS:
        raise ConfigError(f"CAM method must be one of {METHODS}, got {method!r}")
    if layer is None:
        layer = getattr(mc, "cam_layer", None) or "auto"
        if layer != "auto" and layer not in dict(model.named_modules()):
            import warnings  # a preset's layer on another backbone (cpu-demo + --set model.backbone=...)
            warnings.warn(f"model.cam_layer {layer!r} is not in this {mc.backbone}; the heatmaps use its "
                          "last feature map", stacklevel=2)
            layer = "auto"
    return method, layer


def grad_cam(model, x: torch.Tensor, method: str = "gradcam", layer: str | None = None):
    """(cams (B, h, w) float32 in [0, 1], logits (B,)) for images x (B, 3, H, W) preprocessed as for predict."""
    if method not in METHODS:
        raise ConfigError(f"CAM method must be one of {METHODS}, got {method!r}")
    target = resolve_layer(model, layer)
    # the input requires grad so that the map does even in a backbone without parameters
    x = x.to(next(model.parameters()).device).detach().requires_grad_(True)
    with torch.enable_grad():
        acts, logits = _activations(model, x, target)
        grads = torch.autograd.grad(logits.float().sum(), acts)[0]  # images are independent (eval mode)
    a, g = (_as_nchw(t.detach().float(), model.backbone) for t in (acts, grads))
    if method == "hirescam":  # Draelos & Carin 2020: gradient x activation per cell, summed over channels
        cam = (g * a).sum(1).clamp(min=0)
    elif method == "layercam":  # Jiang et al. 2021: the same with the gradient's positive part only
        cam = (g.clamp(min=0) * a).sum(1).clamp(min=0)
    else:
        if method == "gradcam":
            weights = g.mean(dim=(2, 3))
        else:  # Grad-CAM++: alpha = g^2 / (2 g^2 + sum(A) g^3), weights = sum(alpha * relu(g))
            g2, g3 = g.pow(2), g.pow(3)
            alpha = g2 / (2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3 + 1e-7)
            weights = (torch.where(g != 0, alpha, 0) * g.clamp(min=0)).sum(dim=(2, 3))
        cam = (weights[:, :, None, None] * a).sum(1).clamp(min=0)
    peak = cam.amax(dim=(1, 2), keepdim=True)
    # an all-zero map stays zero (the notebook's division would have given NaN)
    cam = torch.where(peak > 0, cam / peak.clamp(min=1e-12), torch.zeros_like(cam))
    return cam.cpu().numpy().astype(np.float32), logits.detach().float().cpu().numpy()


# --- pictures ----------------------------------------------------------------------------------

def overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.3) -> np.ndarray:
    """RGB uint8: JET(uint8(255 * heat)) * alpha + image * (1 - alpha), as cv2.addWeighted rounds."""
    from matplotlib import colormaps

    lut = (colormaps["jet"](np.arange(256))[:, :3] * 255).round().astype(np.uint8)
    colour = lut[np.uint8(255 * heat)].astype(np.float32)  # uint8() truncates, as the notebook
    image = np.repeat((np.clip(gray, 0, 1) * 255).round()[..., None], 3, axis=-1)
    return np.clip((alpha * colour + (1 - alpha) * image).round(), 0, 255).astype(np.uint8)


def panel(gray: np.ndarray, over: np.ndarray, p: float, title: str = "") -> np.ndarray:
    """Side by side: image | overlay, with P(fracture) printed above."""
    from PIL import ImageDraw, ImageFont

    h, w = gray.shape
    image = np.repeat((np.clip(gray, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    band = max(18, h // 20)
    canvas = np.full((h + band, 2 * w + 4, 3), 255, np.uint8)
    canvas[band:, :w], canvas[band:, w + 4:] = image, over
    pic = Image.fromarray(canvas)
    text = f"P(fracture) = {p:.3f}   {title}"
    size = int(min(band * 0.75, 1.7 * canvas.shape[1] / len(text)))  # shrink to fit narrow images
    ImageDraw.Draw(pic).text((4, band * 0.1), text, fill=(0, 0, 0), font=ImageFont.load_default(size=max(size, 6)))
    return np.asarray(pic)


def encode(rgb: np.ndarray, name: str) -> bytes:
    """Image bytes in the format of `name`'s extension (the notebook kept the input's)."""
    fmt = Image.registered_extensions().get(Path(name).suffix.lower(), "PNG")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def heatmap_name(p: float, name: str, prefix: str = "heatmap") -> str:
    """`heatmap_{int(p*100):03d}_{name}`: a folder of them sorts by prediction."""
    return f"{prefix}_{int(p * 100):03d}_{name}"


# --- batch over a folder ----------------------------------------------------------------------

def iter_cams(model, paths: list[str], method: str | None = None, layer: str | None = None, batch_size: int = 4,
              output_stride: int | None = None):
    """Stream (path, P(fracture), original gray image, heatmap at its resolution), O(batch) memory.
    `output_stride`: None -> the model's `cam_output_stride`; 0 -> the backbone's own. Finer maps
    come from `dense_model`; P(fracture) always from the model as trained."""
    from torch.utils.data import DataLoader

    from vfa.predict import eval_dataset

    method, layer = cam_settings(model, method, layer)
    temperature = float(getattr(model, "temperature", 1.0))  # as vfa predict reports P(fracture)
    loader = DataLoader(eval_dataset(model, list(paths)), batch_size=batch_size, num_workers=0)
    dense, _, centres = cam_network(model, output_stride, layer)
    for x, _, idx in loader:
        cams, logits = grad_cam(dense, x, method, layer)
        if dense is not model:  # the denser network's global max can differ: report the real model's p
            with torch.no_grad():
                logits = model(x.to(next(model.parameters()).device)).float().cpu().numpy()
        for cam, z, i in zip(cams, logits, idx.tolist()):
            gray = read_image(paths[i])
            yield paths[i], float(1 / (1 + math.exp(-float(z) / temperature))), gray, upsample(cam, gray.shape, centres, model.config.data.size)


def _label(path: str, classes) -> int | str:
    parent = Path(path).parent.name
    return classes.index(parent) if parent in classes else ""


def write_heatmaps(model, paths: list[str], out: str | Path, root: str | Path | None = None,
                   method: str | None = None, layer: str | None = None, alpha: float = 0.3,
                   with_panel: bool = False, start_index: int = 0, manifest: str | Path | None = None,
                   batch_size: int = 4, progress: bool = True, output_stride: int | None = None,
                   log=print) -> dict:
    """Overlay (and optionally panel) files for `paths` under `out`, mirroring their folders below `root`.

    Streaming and resumable: an image whose overlay already exists is skipped (and, with a
    manifest, its localization row in heatmaps.csv is kept), so an interrupted run continues
    where it stopped; `start_index` skips the first images outright, as the notebook's did.
    Returns {"written", "skipped_existing", "localization" (with a manifest)}.
    """
    from vfa.predict import load_model

    if not isinstance(model, torch.nn.Module):
        model = load_model(model)
    method, layer = cam_settings(model, method, layer)
    resolve_layer(model, layer)
    out, root = Path(out), Path(root) if root else None
    boxes = read_manifest(manifest) if manifest else None
    table = out / "heatmaps.csv"
    done = {}
    if table.is_file():
        with open(table, newline="") as f:
            done = {r["file"]: r for r in csv.DictReader(f)}

    def rel(p: str) -> str:
        try:
            return Path(p).relative_to(root).as_posix() if root else Path(p).name
        except ValueError:  # outside root (e.g. an absolute path in a predictions CSV)
            return Path(p).name

    # one listing of what is there, not one per image: folders may hold tens of thousands
    have = {(f.parent.relative_to(out).as_posix(), f.name[len(m.group(0)):], m.group(1))
            for f in (out.rglob("*") if out.is_dir() else ()) if (m := _DONE.match(f.name))}

    def existing(p: str) -> bool:
        r = Path(rel(p))
        ok = (r.parent.as_posix(), r.name, "heatmap") in have
        if with_panel:
            ok = ok and (r.parent.as_posix(), Path(r.name).with_suffix(".png").name, "panel") in have
        return ok and (boxes is None or rel(p) in done)

    todo = [p for p in paths[start_index:] if not existing(p)]
    _, used_stride, _ = cam_network(model, output_stride, layer)  # a bad --output-stride fails before any file
    log(f"heatmaps: {len(todo)} to write, {len(paths[start_index:]) - len(todo)} already there, "
        f"{min(start_index, len(paths))} before --start-index")
    classes = tuple(model.config.data.classes)
    cams = iter_cams(model, todo, method, layer, batch_size, output_stride)
    if progress:
        from tqdm import tqdm
        cams = tqdm(cams, total=len(todo), desc="heatmaps", unit="img")
    out.mkdir(parents=True, exist_ok=True)
    new_file = not table.is_file()
    with open(table, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new_file:
            writer.writeheader()
        for path, p, gray, heat in cams:
            r = Path(rel(path))
            over = overlay(gray, heat, alpha)
            atomic_write(out / r.parent / heatmap_name(p, r.name), encode(over, r.name))
            if with_panel:
                pname = heatmap_name(p, Path(r.name).with_suffix(".png").name, "panel")
                atomic_write(out / r.parent / pname, encode(panel(gray, over, p, r.name), pname))
            row = {"file": r.as_posix(), "p_fracture": p,
                   "heatmap": (r.parent / heatmap_name(p, r.name)).as_posix(), "label": _label(path, classes)}
            if boxes is not None:
                fb = boxes.get(os.path.realpath(path))
                row.update(n_boxes=len(fb or []), **(localize(heat, fb) if fb else {}))
            done[row["file"]] = row
            writer.writerow(row)
            f.flush()  # a row per image as it is written: an interruption loses nothing
    result = {"written": len(todo), "skipped_existing": len(paths[start_index:]) - len(todo)}
    if boxes is not None:
        wanted = {rel(p) for p in paths[start_index:]}
        result["localization"] = {**summarize([r for k, r in done.items() if k in wanted]), "method": method,
                                  "layer": layer, "output_stride": used_stride}
        from vfa.evaluate import json_safe
        atomic_write(out / "localization.json", json.dumps(json_safe(result["localization"]), indent=2))
    return result



# --- for vfa evaluate: localization over a labelled set and a TP / FP / FN gallery -------------

def localization_rows(model, paths: list[str], boxes: dict[str, list], method: str | None = None,
                      layer: str | None = None, batch_size: int = 4, output_stride: int | None = None) -> list[dict]:
    """One row per image of `paths` that has fractured boxes (others are not scored)."""
    scored = [p for p in paths if boxes.get(os.path.realpath(p))]
    rows = []
    for path, p, _, heat in iter_cams(model, scored, method, layer, batch_size, output_stride):
        fb = boxes[os.path.realpath(path)]
        rows.append({"file": path, "p_fracture": p, "n_boxes": len(fb), **localize(heat, fb)})
    return rows


def select_gallery(frame, score: str, k: int = 4) -> dict[str, list[int]]:
    """Row positions of up to k true positives (most confident), false positives (most confident)
    and false negatives (least confident) of a predictions frame with label and predicted."""
    y, pred, p = frame["label"].to_numpy(), frame["predicted"].to_numpy(), frame[score].to_numpy()
    pick = {"true positives": (y == 1) & (pred == 1), "false positives": (y == 0) & (pred == 1),
            "false negatives": (y == 1) & (pred == 0)}
    out = {}
    for name, sel in pick.items():
        idx = np.flatnonzero(sel)
        order = np.argsort(p[idx], kind="stable")
        out[name] = idx[order if name == "false negatives" else order[::-1]][:k].tolist()
    return out


def gallery_png(model, groups: dict[str, list[str]], boxes: dict[str, list] | None = None,
                method: str | None = None, layer: str | None = None, alpha: float = 0.3,
                thumb: int = 320) -> bytes:
    """A grid of overlays, one row per group (e.g. true positives), fractured boxes outlined in white."""
    method, layer = cam_settings(model, method, layer)  # once: the maps and the title name the same
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cols = max(1, max((len(v) for v in groups.values()), default=1))
    ratios = [1 if paths else 0.1 for paths in groups.values()]  # an empty group is only its title
    fig, axes = plt.subplots(len(groups), cols, figsize=(2.2 * cols, 0.6 + 3.4 * sum(ratios)), squeeze=False,
                             gridspec_kw={"height_ratios": ratios})
    for ax in axes.flat:
        ax.axis("off")
    for r, (name, paths) in enumerate(groups.items()):
        axes[r, 0].set_title(f"{name}: none" if not paths else name, loc="left", fontsize=10)
        for c, (path, p, gray, heat) in enumerate(iter_cams(model, paths, method, layer)):
            ax = axes[r, c]
            ax.axis("on")
            ax.set(xticks=[], yticks=[])
            s = min(1.0, thumb / gray.shape[0])
            # overlay first, then shrink with antialiasing: subsampling the map would drop a focal peak
            small = Image.fromarray(overlay(gray, heat, alpha)).resize(
                (max(1, round(gray.shape[1] * s)), max(1, round(gray.shape[0] * s))), Image.LANCZOS)
            ax.imshow(np.asarray(small), extent=(0, gray.shape[1], gray.shape[0], 0))
            for x0, y0, x1, y1 in (boxes or {}).get(os.path.realpath(path), []):
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=0.8))
            ax.text(0.02, 0.98, f"p={p:.2f}", color="white", fontsize=8, va="top", transform=ax.transAxes,
                    bbox=dict(fc="black", alpha=0.5, lw=0, pad=1))
            ax.set_xlabel(Path(path).name, fontsize=6)
    title = f"{METHOD_NAMES[method]} on {'the last feature map' if layer == 'auto' else layer} (JET, alpha {alpha})"
    fig.suptitle(title + ("; white boxes: fractured vertebrae" if boxes else ""), fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
