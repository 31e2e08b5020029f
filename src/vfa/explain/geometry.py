"""Where a Grad-CAM map comes from and where its cells sit on the image.

The target layer (`resolve_layer`), its activations in (B, C, h, w) form, a finer version of the
backbone for finer maps (`dense_model`: same weights, a trous), the image position each cell is
centred on (`cell_centres`, measured on a positive linear twin of the network), and `upsample`,
which resizes a map to the original image between those centres. `cam_network` ties them
together, cached per model.
"""
from __future__ import annotations

import math
import weakref

import numpy as np
import torch

from vfa.config import ConfigError


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


def as_nchw(t: torch.Tensor, backbone) -> torch.Tensor:
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


def layer_activations(model, x: torch.Tensor, target):
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

    from vfa.models.backbones import DenseMaxPool

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
            acts = layer_activations(twin, x, resolve_layer(twin, layer))[0]
        except (AssertionError, RuntimeError, ValueError):  # a fixed input size (ViT, Swin)
            return None
        if acts.dim() != 4:
            return None
        acts = as_nchw(acts, twin.backbone)
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

    from vfa.models.network import build_from_config

    cfg = copy.deepcopy(model.config.model)
    cfg.backbone_kwargs = {**cfg.backbone_kwargs, "output_stride": int(output_stride)}
    device = next(model.parameters()).device
    try:
        dense = build_from_config(cfg).to(device).eval()
        dense.load_state_dict(model.state_dict())
        dense.config = model.config
        probe = torch.rand(1, 3, *model.config.data.size, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            a, b = (as_nchw(m.backbone.forward_features(probe), m.backbone) for m in (model, dense))
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

    def weights(n, out, o=None, s=None, n_in=None):  # (out, n): linear between knots, constant outside
        k = knots(n, out, o, s, n_in)
        pos = np.clip(np.arange(out, dtype=np.float64), k[0], k[-1])
        i = np.clip(np.searchsorted(k, pos, side="right") - 1, 0, max(n - 2, 0))
        frac = (pos - k[i]) / (k[i + 1] - k[i]) if n > 1 else np.zeros(out)
        m = np.zeros((out, n))
        m[np.arange(out), i] = 1 - frac
        if n > 1:
            m[np.arange(out), i + 1] += frac
        return m

    if centres is None:
        wy, wx = weights(h, H), weights(w, W)
    else:
        oy, sy, ox, sx = centres
        wy, wx = weights(h, H, oy, sy, input_size[0]), weights(w, W, ox, sx, input_size[1])
    return np.clip(wy @ cam.astype(np.float64) @ wx.T, 0, 1).astype(np.float32)
