"""Class-activation maps: Grad-CAM and the other registered methods, streamed over image files.

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

import os

import numpy as np
import torch

from vfa.data.dataset import ImageDataset
from vfa.data.samples import Samples
from vfa.data.transforms import create_transform
from vfa.explain.geometry import as_nchw, cam_network, layer_activations, resolve_layer, upsample
from vfa.explain.localization import localize
from vfa.models.network import p_fracture
from vfa.registry import CAM_METHODS as REGISTRY

METHODS = REGISTRY.names()  # declared, with their names and help, in vfa.registry
METHOD_NAMES = {m: REGISTRY.title(m) for m in METHODS}


# --- the map -----------------------------------------------------------------------------------


def cam_settings(model, method: str | None = None, layer: str | None = None) -> tuple[str, str]:
    """(method, layer): None picks the model's own `model.cam_method` / `model.cam_layer` (the
    notebook's Grad-CAM on the last feature map unless its preset says otherwise); layer "auto" is
    the last feature map whatever the model's default. An ensemble whose members default to
    different layers uses each one's last feature map ("auto")."""
    members = members_of(model)
    if len(members) > 1:
        chosen = {cam_settings(m, method, layer) for m in members}
        return chosen.pop() if len(chosen) == 1 else (next(iter(chosen))[0], "auto")
    model = members[0]
    mc = getattr(getattr(model, "config", None), "model", None)
    method = REGISTRY.check(method or getattr(mc, "cam_method", "gradcam"), "CAM method")
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
    weigh = REGISTRY.get(method)
    target = resolve_layer(model, layer)
    # the input requires grad so that the map does even in a backbone without parameters
    x = x.to(next(model.parameters()).device).detach().requires_grad_(True)
    with torch.enable_grad():
        acts, logits = layer_activations(model, x, target)
        grads = torch.autograd.grad(logits.float().sum(), acts)[0]  # images are independent (eval mode)
    a, g = (as_nchw(t.detach().float(), model.backbone) for t in (acts, grads))
    cam = weigh(g, a).clamp(min=0)
    peak = cam.amax(dim=(1, 2), keepdim=True)
    # an all-zero map stays zero (the notebook's division would have given NaN)
    cam = torch.where(peak > 0, cam / peak.clamp(min=1e-12), torch.zeros_like(cam))
    return cam.cpu().numpy().astype(np.float32), logits.detach().float().cpu().numpy()


# Each method: (gradients, activations), both (B, C, h, w) -> the map (B, h, w) before ReLU and scaling.

@REGISTRY.register("gradcam")
def _gradcam(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return (g.mean(dim=(2, 3))[:, :, None, None] * a).sum(1)


@REGISTRY.register("gradcam++")
def _gradcam_pp(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    # alpha = g^2 / (2 g^2 + sum(A) g^3), weights = sum(alpha * relu(g))
    g2, g3 = g.pow(2), g.pow(3)
    alpha = g2 / (2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3 + 1e-7)
    weights = (torch.where(g != 0, alpha, 0) * g.clamp(min=0)).sum(dim=(2, 3))
    return (weights[:, :, None, None] * a).sum(1)


@REGISTRY.register("hirescam")
def _hirescam(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:  # Draelos & Carin 2020
    return (g * a).sum(1)


@REGISTRY.register("layercam")
def _layercam(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:  # Jiang et al. 2021: positive gradients only
    return (g.clamp(min=0) * a).sum(1)


# --- streaming maps over files -----------------------------------------------------------------

def members_of(model) -> list:
    """The networks behind `model`: an ensemble's members (vfa.inference.ensemble), or the model itself."""
    return list(getattr(model, "members", None) or [model])


def iter_cams(model, paths: list[str], method: str | None = None, layer: str | None = None, batch_size: int = 4,
              output_stride: int | None = None):
    """As `_iter_cams`; for an ensemble, the mean of its members' maps (each member with its own
    default layer unless `layer` is given) and the ensemble's combined P(fracture)."""
    members = members_of(model)
    if len(members) == 1:
        yield from _iter_cams(members[0], paths, method, layer, batch_size, output_stride)
        return
    streams = [_iter_cams(m, paths, method, layer, batch_size, output_stride) for m in members]
    for items in zip(*streams):
        path, _, gray, _ = items[0]
        p = float(model.combined(np.array([[it[1] for it in items]]))[0])
        yield path, p, gray, np.mean([it[3] for it in items], axis=0)


def _iter_cams(model, paths: list[str], method: str | None = None, layer: str | None = None, batch_size: int = 4,
               output_stride: int | None = None):
    """Stream (path, P(fracture), original gray image, heatmap at its resolution), O(batch) memory.
    `output_stride`: None -> the model's `cam_output_stride`; 0 -> the backbone's own. Finer maps
    come from `dense_model`; P(fracture) always from the model as trained."""
    from torch.utils.data import DataLoader

    method, layer = cam_settings(model, method, layer)
    temperature = float(getattr(model, "temperature", 1.0))  # as vfa predict reports P(fracture)
    transform = create_transform(model)
    loader = DataLoader(ImageDataset(Samples(list(paths), [-1] * len(paths), ""), transform), batch_size=batch_size,
                        num_workers=0)
    dense, _, centres = cam_network(model, output_stride, layer)
    for x, _, idx in loader:
        cams, logits = grad_cam(dense, x, method, layer)
        if dense is not model:  # the denser network's global max can differ: report the real model's p
            with torch.no_grad():
                logits = model(x.to(next(model.parameters()).device)).float().cpu().numpy()
        for cam, z, i in zip(cams, logits, idx.tolist()):
            gray = transform.read(paths[i])  # the checkpoint's frame and normalization, full size
            yield (paths[i], p_fracture(float(z), temperature), gray,
                   upsample(cam, gray.shape, centres, model.config.data.size))


def localization_rows(model, paths: list[str], boxes: dict[str, list], method: str | None = None,
                      layer: str | None = None, batch_size: int = 4, output_stride: int | None = None) -> list[dict]:
    """One row per image of `paths` that has fractured boxes (others are not scored)."""
    scored = [p for p in paths if boxes.get(os.path.realpath(p))]
    rows = []
    for path, p, _, heat in iter_cams(model, scored, method, layer, batch_size, output_stride):
        fb = boxes[os.path.realpath(path)]
        rows.append({"file": path, "p_fracture": p, "n_boxes": len(fb), **localize(heat, fb)})
    return rows
