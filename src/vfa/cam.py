"""Grad-CAM heatmaps, the notebook's overlays, and how well they point at the fractured vertebrae.

The notebook took the gradient of P(fracture) with respect to the Inception-ResNet-v2 base's
1536-channel output, averaged it over space into channel weights, weighted the feature map,
averaged over channels, applied ReLU, divided by the maximum, resized the map to the original
image, coloured it with JET and blended `0.3 * heatmap + 0.7 * image`. That base output is what
timm's `forward_features` returns for every backbone, so it is the default target here
(`layer=None`); any named module can be chosen instead (`layer="backbone.layer3"`).

We differentiate the logit, not the probability: dp/dA = p(1-p) * dlogit/dA, a positive factor
per image that the division by the maximum cancels, so Grad-CAM maps are the notebook's exactly.
Grad-CAM++ (Chattopadhay et al. 2018) is the `method="gradcam++"` option.

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
import weakref
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vfa.config import ConfigError
from vfa.io import read_image
from vfa.runs import atomic_write

METHODS = ("gradcam", "gradcam++", "hirescam")
_DONE = re.compile(r"^(heatmap|panel)_\d{3}_")
CSV_FIELDS = ("file", "p_fracture", "heatmap", "label", "n_boxes", "pointing_hit", "pointing_hit_tol", "mass_in_boxes")


# --- the map -----------------------------------------------------------------------------------

def resolve_layer(model, name: str | None):
    """None / "auto" -> None (the backbone's last feature map); otherwise the named module."""
    if name in (None, "", "auto"):
        return None
    modules = dict(model.named_modules())
    if name not in modules:
        hint = [f"backbone.{f['module']}" for f in getattr(model.backbone, "feature_info", [])][-4:]
        raise ConfigError(f"no module named {name!r} in the model (e.g. {', '.join(hint) or 'backbone.*'}; "
                          f"see model.named_modules())")
    return modules[name]


def _as_nchw(t: torch.Tensor, backbone) -> torch.Tensor:
    """timm's forward_features is NCHW for CNNs, NHWC for some (Swin) and tokens for ViTs."""
    c = backbone.num_features
    if t.dim() == 4 and t.shape[1] != c and t.shape[-1] == c:
        return t.permute(0, 3, 1, 2)
    if t.dim() == 3:  # (B, prefix + h*w, C): drop class/register tokens, fold the rest into the grid
        t = t[:, getattr(backbone, "num_prefix_tokens", 0):]
        grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
        h, w = grid if grid and grid[0] * grid[1] == t.shape[1] else (math.isqrt(t.shape[1]),) * 2
        return t.transpose(1, 2).reshape(t.shape[0], c, h, w)
    if t.dim() != 4:
        raise ConfigError(f"the target layer's output has shape {tuple(t.shape)}; Grad-CAM needs a map")
    return t


def _activations(model, x: torch.Tensor, target):
    """(target layer's output, logits) with the graph kept; target None: forward_features' output."""
    if target is None:
        acts = model.backbone.forward_features(x)
        return acts, model.head(model.backbone.forward_head(acts)).squeeze(-1)
    store = {}

    def hook(module, inputs, output):
        store["a"] = output
        return output.clone()  # later in-place ops (ReLU, +=) must not touch the stored map
    handle = target.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    return store["a"], logits


def _geometry_twin(model):
    """A copy of `model` with every weight positive and uniform (1 / fan-in), biases zero,
    normalisation layers the identity and max pools replaced by average pools over the same windows:
    a positive linear network, so |d cell / d input| is the receptive field's own shape (the same for
    any input) rather than what training, or one input's max-pool choices, made of it."""
    import copy

    from vfa.backbones import DenseMaxPool

    twin = copy.deepcopy(model).float().eval()
    for name, m in list(twin.named_modules()):
        if isinstance(m, DenseMaxPool):
            m.average = True
        elif isinstance(m, torch.nn.MaxPool2d) and m.dilation in (1, (1, 1)):
            parent, _, attr = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, attr, torch.nn.AvgPool2d(
                m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode, count_include_pad=True))
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() > 1:
                p.fill_(1.0 / p[0].numel())
            else:
                p.fill_(1.0)
        for m in twin.modules():
            if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    return twin


def cell_centres(model, layer: str | None = None, n: int = 1, probes: int = 6):
    """(oy, sy, ox, sx): cell (i, j) of the CAM layer's map is centred on network-input pixel
    (oy + sy*i, ox + sx*j). Measured for any backbone as the centroid of |d cell / d input| of the
    `_geometry_twin` at up to `probes` interior cells, fitted by least squares: unpadded stems,
    even-sized pooling and dilated maps put the centres off the half-cell grid a plain resize assumes
    (for vfa_cnn_small by 15 px at output stride 8, enough to miss a vertebra). None (the half-cell
    grid) for token maps (ViTs) and for networks that only take their own input size. A receptive
    field wider than the input is clipped by the canvas, which biases the fit slightly (ResNet-18 at
    256x192: stride 31.8 instead of 32; exact from 384x288)."""
    twin = _geometry_twin(model)
    # a canvas twice the input: cells in its middle have receptive fields the borders do not clip
    # (a clipped one's centroid is pulled inwards); o + s*i holds at any input size for a CNN
    h_in, w_in = (2 * v for v in model.config.data.size)
    x = torch.rand(n, 3, h_in, w_in, generator=torch.Generator().manual_seed(0))
    x = x.to(next(twin.parameters()).device).requires_grad_(True)
    with torch.enable_grad():
        try:
            acts = _activations(twin, x, resolve_layer(twin, layer))[0]
        except (AssertionError, RuntimeError, ValueError):  # a fixed input size (ViT, Swin)
            return None
        if acts.dim() != 4:
            return None
        acts = _as_nchw(acts, twin.backbone)
        h, w = acts.shape[-2:]
        if min(h, w) < 8:  # too few interior cells to fit
            return None
        k = min(probes, h // 2, w // 2)  # the middle half of the map, on a diagonal
        rows = np.linspace(h // 4, h - 1 - h // 4, k).round().astype(int)
        cols = np.linspace(w // 4, w - 1 - w // 4, k).round().astype(int)
        ys, xs = [], []
        for t, (r, c) in enumerate(zip(rows, cols)):
            g = torch.autograd.grad(acts[:, :, r, c].sum(), x, retain_graph=t + 1 < k)[0]
            m = g.abs().sum(dim=(0, 1)).double().cpu()
            m = m / m.sum()
            ys.append(float((m.sum(1) * torch.arange(h_in)).sum()))
            xs.append(float((m.sum(0) * torch.arange(w_in)).sum()))
    sy, oy = np.polyfit(rows, ys, 1)
    sx, ox = np.polyfit(cols, xs, 1)
    return float(oy), float(sy), float(ox), float(sx)


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


_NETWORKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def cam_network(model, output_stride: int | None = None, layer: str | None = None):
    """(network for the maps, output stride used (None: the backbone's own), cell centres), cached per
    model. output_stride None -> the model config's cam_output_stride, which falls back to the
    backbone's own map with a warning where the backbone cannot run at it; 0 -> the backbone's own."""
    cache = _NETWORKS.setdefault(model, {})
    if (output_stride, layer) in cache:
        net, used, centres = cache[output_stride, layer]
        return net or model, used, centres
    wanted = output_stride
    if wanted is None:
        wanted = getattr(getattr(getattr(model, "config", None), "model", None), "cam_output_stride", None)
    try:
        net, used = dense_model(model, wanted or None), wanted or None
    except ConfigError as exc:
        if output_stride is not None:  # asked for explicitly: say no
            raise
        import warnings  # the config's default does not fit this backbone (cpu-demo + another one)
        warnings.warn(f"{exc}; Grad-CAM uses the backbone's own last feature map", stacklevel=2)
        net, used = model, None
    centres = cell_centres(net, layer)
    cache[output_stride, layer] = (None if net is model else net), used, centres  # no reference to the key
    return net, used, centres


def dense_model(model, output_stride: int | None):
    """`model` with its backbone evaluated at `output_stride` (same weights, dilated instead of
    strided: a trous / shift-and-stitch), whose last feature map is 2^k times finer; `model` itself
    for None. A stride-32 map of a 384x224 input is 12x7 cells of ~55 px on a 640x384 scan, wider
    than a vertebral body, and a Grad-CAM maximum can only sit at a cell centre."""
    if not output_stride:
        return model
    import copy

    from vfa.model import build_from_config

    cfg = copy.deepcopy(model.config.model)
    cfg.backbone_kwargs = {**cfg.backbone_kwargs, "output_stride": int(output_stride)}
    device = next(model.parameters()).device
    try:
        dense = build_from_config(cfg).to(device).eval()
        dense.load_state_dict(model.state_dict())
        dense.config = model.config
        probe = torch.rand(1, 3, *model.config.data.size, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            a, b = (_as_nchw(m.backbone.forward_features(probe), m.backbone) for m in (model, dense))
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise ConfigError(f"--output-stride {output_stride}: {model.config.model.backbone} cannot run at it "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from None
    name = f"--output-stride {output_stride}: {model.config.model.backbone}"
    if b.shape[-2:] == a.shape[-2:]:
        if output_stride >= 0.75 * model.config.data.size[0] / a.shape[-2]:  # its own stride: nothing to do
            return model
        raise ConfigError(f"{name} ignores timm's output_stride (its map stays {a.shape[-2]}x{a.shape[-1]}); "
                          "leave the option out")
    k = round(b.shape[-2] / a.shape[-2])
    # the finer map must hold the trained network's own outputs on its every k-th cell; it does not
    # where the input size is not a multiple of the stride (a strided layer drops an edge row)
    sub = b[..., ::k, ::k]
    if sub.shape != a.shape or not torch.allclose(sub, a, rtol=1e-3, atol=1e-4 * float(a.abs().max())):
        raise ConfigError(f"{name} does not reproduce the trained network's outputs at input size "
                          f"{model.config.data.size[0]}x{model.config.data.size[1]} (use sizes that are "
                          f"multiples of the network's stride)")
    return dense


def upsample(cam: np.ndarray, size: tuple[int, int], centres=None, input_size=None) -> np.ndarray:
    """Bilinear to size = (H, W) of the original image, constant beyond the outermost cells.

    centres None: cells on the half-pixel grid (as cv2.resize). Otherwise (oy, sy, ox, sx) from
    `cell_centres` in pixels of the network input of `input_size`, which was a resize of the original."""
    h, w = cam.shape
    H, W = size

    def knots(n, out, o, s, n_in):  # cell centres in original pixels
        if o is None:
            return (np.arange(n) + 0.5) * out / n - 0.5
        return (o + s * np.arange(n) + 0.5) * out / n_in - 0.5

    def weights(n, out, o=None, s=None, n_in=None):  # (out, n) hat functions: linear between knots
        k = knots(n, out, o, s, n_in)
        return np.stack([np.interp(np.arange(out), k, np.eye(n)[c]) for c in range(n)], 1)

    if centres is None:
        wy, wx = weights(h, H), weights(w, W)
    else:
        oy, sy, ox, sx = centres
        wy, wx = weights(h, H, oy, sy, input_size[0]), weights(w, W, ox, sx, input_size[1])
    return np.clip(wy @ cam.astype(np.float64) @ wx.T, 0, 1).astype(np.float32)


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


# --- localization ------------------------------------------------------------------------------

def box_mask(shape: tuple[int, int], boxes) -> np.ndarray:
    """Union of [x0, y0, x1, y1] boxes (original pixels, end exclusive) as a boolean (H, W) mask."""
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(int(y0), 0):int(y1), max(int(x0), 0):int(x1)] = True
    return mask


# Zhang et al. (2018, "Top-down neural attention by excitation backprop") count a hit within 15 px
# of the annotation; a collapsed vertebra's signal also sits on its endplates and widened discs.
POINTING_TOLERANCE_PX = 15


def localize(heat: np.ndarray, boxes, tolerance: float = POINTING_TOLERANCE_PX) -> dict:
    """Pointing game hit (the map's maximum inside a box; and within `tolerance` px of one) and the
    share of heatmap mass inside the boxes."""
    mask = box_mask(heat.shape, boxes)
    total = float(heat.sum())
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    dist = min((math.hypot(max(x0 - c, 0, c - (x1 - 1)), max(y0 - r, 0, r - (y1 - 1)))
                for x0, y0, x1, y1 in boxes), default=math.inf)
    return {"pointing_hit": bool(mask[r, c]), "pointing_hit_tol": bool(dist <= tolerance),
            "mass_in_boxes": float(heat[mask].sum() / total) if total > 0 else math.nan}


def summarize(rows) -> dict:
    """Pointing game with its Wilson 95 % CI and mean heatmap mass in boxes, over rows that have boxes."""
    from vfa.stats import wilson

    rows = [r for r in rows if int(r.get("n_boxes") or 0) > 0]
    hits = sum(str(r["pointing_hit"]) in ("True", "1", "true") for r in rows)
    hits_tol = sum(str(r.get("pointing_hit_tol")) in ("True", "1", "true") for r in rows)
    mass = [float(r["mass_in_boxes"]) for r in rows if r["mass_in_boxes"] not in ("", None)
            and not math.isnan(float(r["mass_in_boxes"]))]
    n = len(rows)
    return {"n_fractured": n, "pointing_hits": hits, "pointing_game": hits / n if n else math.nan,
            "pointing_game_ci": list(wilson(hits, n)),
            f"pointing_game_tol{POINTING_TOLERANCE_PX}px": hits_tol / n if n else math.nan,
            f"pointing_game_tol{POINTING_TOLERANCE_PX}px_ci": list(wilson(hits_tol, n)), "mass_in_boxes": float(np.mean(mass)) if mass else math.nan,
            "mass_in_boxes_median": float(np.median(mass)) if mass else math.nan,
            "definition": "pointing game: share of fractured images whose heatmap maximum (at original "
                          "resolution) lies inside a fractured vertebra's box (tolN: within N px of one, as Zhang et al. 2018); 95 % CI Wilson. Mass: share of "
                          "the heatmap's sum inside those boxes, mean over the same images."}


def read_manifest(path: str | Path) -> dict[str, list]:
    """{resolved image path: fractured boxes} from a phantom manifest (filenames relative to its folder)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    frame = pd.read_csv(path)
    if not {"filename", "fractured_boxes"} <= set(frame.columns):
        raise ConfigError(f"{path}: needs 'filename' and 'fractured_boxes' columns (as vfa synth writes)")
    return {os.path.realpath(path.parent / f): json.loads(b) if isinstance(b, str) and b else []
            for f, b in zip(frame["filename"], frame["fractured_boxes"])}


def find_manifest(data: str | Path) -> Path | None:
    """A phantom's manifest.csv in `data` or its parent (DATA/test -> DATA/manifest.csv)."""
    for d in (Path(data), Path(data).parent):
        m = d / "manifest.csv"
        if m.is_file():
            with open(m, newline="") as f:
                if "fractured_boxes" in (next(csv.reader(f), None) or []):
                    return m
    return None


# --- batch over a folder ----------------------------------------------------------------------

def iter_cams(model, paths: list[str], method: str = "gradcam", layer: str | None = None, batch_size: int = 4,
              output_stride: int | None = None):
    """Stream (path, P(fracture), original gray image, heatmap at its resolution), O(batch) memory.
    `output_stride`: None -> the model's `cam_output_stride`; 0 -> the backbone's own. Finer maps
    come from `dense_model`; P(fracture) always from the model as trained."""
    from torch.utils.data import DataLoader

    from vfa.predict import eval_dataset

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
                   method: str = "gradcam", layer: str | None = None, alpha: float = 0.3,
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
    resolve_layer(model, layer)
    if method not in METHODS:
        raise ConfigError(f"CAM method must be one of {METHODS}, got {method!r}")
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
                                  "output_stride": used_stride}
        from vfa.evaluate import json_safe
        atomic_write(out / "localization.json", json.dumps(json_safe(result["localization"]), indent=2))
    return result



# --- for vfa evaluate: localization over a labelled set and a TP / FP / FN gallery -------------

def localization_rows(model, paths: list[str], boxes: dict[str, list], method: str = "gradcam",
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
                method: str = "gradcam", layer: str | None = None, alpha: float = 0.3,
                thumb: int = 320) -> bytes:
    """A grid of overlays, one row per group (e.g. true positives), fractured boxes outlined in white."""
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
            small = (slice(None, None, max(1, round(1 / s))),) * 2  # a cheap thumbnail for the figure
            ax.imshow(overlay(gray[small], heat[small], alpha), extent=(0, gray.shape[1], gray.shape[0], 0))
            for x0, y0, x1, y1 in (boxes or {}).get(os.path.realpath(path), []):
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=0.8))
            ax.text(0.02, 0.98, f"p={p:.2f}", color="white", fontsize=8, va="top", transform=ax.transAxes,
                    bbox=dict(fc="black", alpha=0.5, lw=0, pad=1))
            ax.set_xlabel(Path(path).name, fontsize=6)
    fig.suptitle("Grad-CAM (JET, alpha 0.3); white boxes: fractured vertebrae" if boxes
                 else "Grad-CAM (JET, alpha 0.3)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
