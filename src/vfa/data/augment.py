"""Training / test-time augmentation, re-implementing Keras 2.1.5 ``ImageDataGenerator`` in torch.

Geometry follows Keras 2.1.5 ``random_transform`` exactly: the composed matrix
``rotation @ shift @ shear @ zoom`` is conjugated with a translation to ``o = (H/2 + 0.5, W/2 + 0.5)``
(``transform_matrix_offset_center``) and handed to ``scipy.ndimage.affine_transform(order=1,
mode="constant")`` as an *inverse* map: ``output[p] = bilinear(input, q)`` with

    q = R(theta) Sh(s) Z (p - o) + R(theta) (tx, ty)^T + o,   p = (row, col).

Everything works on float tensors in [0, 1], (C,H,W) or (B,C,H,W), CPU or CUDA; a batch may carry
per-sample parameters so the same code serves GPU batch augmentation. See
``docs/notebook-differences.md`` for what the notebook's prose said versus what it executed;
both are presets here ("seed" = documented intent, "keras215" = executed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# the presets are plain configuration (no torch), so vfa.config validates them without importing this module
from vfa.config import AUGMENT_PRESETS as PRESETS  # noqa: F401
from vfa.config import AugmentConfig, get_augment_config

__all__ = [
    "AugmentConfig", "PRESETS", "get_augment_config", "apply_affine", "affine_matrix",
    "resize", "channel_shift", "Augment", "warp_points", "vendor_look",
]

Param = float | Tensor


def _as_batch(v: Param, b: int, device) -> Tensor:
    """Parameter (python float, 0-d or 1-D tensor) -> float64 tensor of shape (b,)."""
    t = torch.as_tensor(v, dtype=torch.float64, device=device).reshape(-1)
    if t.numel() not in (1, b):
        raise ValueError(f"parameter has {t.numel()} values for a batch of {b}")
    return t.expand(b)


def affine_matrix(theta: Param = 0.0, tx: Param = 0.0, ty: Param = 0.0, shear: Param = 0.0,
                  zx: Param = 1.0, zy: Param = 1.0, *, size: tuple[int, int], batch: int = 1,
                  device=None) -> tuple[Tensor, Tensor]:
    """The inverse map ``q = A p + b`` in scipy's convention: (A (B,2,2), b (B,2)), float64.

    ``A`` and ``b`` are exactly ``matrix`` and ``offset`` for ``scipy.ndimage.affine_transform``.
    """
    h, w = size
    th = torch.deg2rad(_as_batch(theta, batch, device))
    s = torch.deg2rad(_as_batch(shear, batch, device))
    t = torch.stack([_as_batch(tx, batch, device), _as_batch(ty, batch, device)], -1)
    zero = torch.zeros_like(th)
    rot = torch.stack([th.cos(), -th.sin(), th.sin(), th.cos()], -1).view(-1, 2, 2)
    sh = torch.stack([th.new_ones(batch), -s.sin(), zero, s.cos()], -1).view(-1, 2, 2)
    zoom = torch.diag_embed(torch.stack([_as_batch(zx, batch, device),
                                         _as_batch(zy, batch, device)], -1))
    a = rot @ sh @ zoom
    # Keras' centre is H/2 + 0.5, not (H-1)/2: half a pixel off the true centre; kept for fidelity.
    o = torch.tensor([h / 2 + 0.5, w / 2 + 0.5], dtype=torch.float64, device=device)
    b = (rot @ t.unsqueeze(-1)).squeeze(-1) + o - (a @ o)
    return a, b


def apply_affine(image: Tensor, theta: Param = 0.0, tx: Param = 0.0, ty: Param = 0.0,
                 shear: Param = 0.0, zx: Param = 1.0, zy: Param = 1.0, *, fill: float = 0.0) -> Tensor:
    """Keras 2.1.5 ``apply_transform``: theta, shear in degrees; tx/ty row/column shift in pixels;
    zx/zy scale rows/columns (>1 zooms out). Bilinear; ``fill`` where q lies outside the input.

    Sampling is done by hand (gather) rather than ``grid_sample`` so that it is exact in pixel
    units and matches scipy's ``mode="constant"``: a point outside [0, H-1] x [0, W-1] gets
    ``fill`` outright (no blending with the fill across the last half pixel).
    """
    if not image.is_floating_point():
        raise TypeError(f"apply_affine needs a float tensor, got {image.dtype}")
    single = image.dim() == 3
    x = image.unsqueeze(0) if single else image
    if x.dim() != 4:
        raise ValueError(f"expected (C,H,W) or (B,C,H,W), got shape {tuple(image.shape)}")
    bsz, c, h, w = x.shape
    if all(not isinstance(v, Tensor) for v in (theta, tx, ty, shear, zx, zy)) and \
            (theta, tx, ty, shear, zx, zy) == (0, 0, 0, 0, 1, 1):
        return image.clone()  # Keras skips the transform entirely when nothing was drawn
    # float64 coordinates keep sub-pixel error ~1e-13 even at 600 px (mps has no float64).
    cdt = torch.float32 if x.device.type == "mps" else torch.float64
    a, b = affine_matrix(theta, tx, ty, shear, zx, zy, size=(h, w), batch=bsz, device=x.device)
    a, b = a.to(cdt), b.to(cdt)
    rows = torch.arange(h, dtype=cdt, device=x.device).view(1, h, 1)
    cols = torch.arange(w, dtype=cdt, device=x.device).view(1, 1, w)
    qr = a[:, 0, 0, None, None] * rows + a[:, 0, 1, None, None] * cols + b[:, 0, None, None]
    qc = a[:, 1, 0, None, None] * rows + a[:, 1, 1, None, None] * cols + b[:, 1, None, None]
    inside = (qr >= 0) & (qr <= h - 1) & (qc >= 0) & (qc <= w - 1)
    r0f, c0f = qr.floor().clamp(0, h - 1), qc.floor().clamp(0, w - 1)
    fr, fc = (qr - r0f).to(x.dtype), (qc - c0f).to(x.dtype)
    r0, c0 = r0f.long(), c0f.long()
    r1, c1 = (r0 + 1).clamp(max=h - 1), (c0 + 1).clamp(max=w - 1)
    flat = x.reshape(bsz, c, h * w)

    def at(r: Tensor, cc: Tensor) -> Tensor:
        idx = (r * w + cc).view(bsz, 1, h * w).expand(bsz, c, h * w)
        return flat.gather(2, idx).view(bsz, c, h, w)

    fr, fc = fr.unsqueeze(1), fc.unsqueeze(1)
    out = ((1 - fr) * ((1 - fc) * at(r0, c0) + fc * at(r0, c1))
           + fr * ((1 - fc) * at(r1, c0) + fc * at(r1, c1)))
    out = torch.where(inside.unsqueeze(1), out, out.new_tensor(fill))
    return out.squeeze(0) if single else out


def warp_points(points: Tensor, params: dict, size: tuple[int, int]) -> Tensor:
    """Where ``Augment.apply`` with ``params`` (one image's draw) moves points of an image of
    ``size`` = (H, W): (..., 2) as (x, y) pixels with the origin at the top-left corner (a pixel's
    centre at +0.5, as the per-vertebra table's points). ``apply_affine`` samples output p at input
    q = A p + b (pixel-centre row, col), so a point at q lands at p = A^-1 (q - b)."""
    a, b = affine_matrix(*(params[k] for k in ("theta", "tx", "ty", "shear", "zx", "zy")), size=size,
                         device=points.device)
    q = points.flip(-1).to(torch.float64).reshape(-1, 2) - 0.5          # (row, col) of pixel centres
    p = torch.linalg.solve(a[0], (q - b[0]).T).T
    return (p + 0.5).flip(-1).reshape(points.shape).to(points.dtype)


def resize(image: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resize (C,H,W) or (B,C,H,W) to ``size`` = (H, W).

    "nearest" is PIL NEAREST (source index floor((i + 0.5) * in / out)), which is what Keras'
    ``load_img`` used; torch's "nearest-exact" is that rule ("nearest" is not).
    "bilinear" is antialiased, the sensible choice for the large downsampling DXA images need.
    """
    single = image.dim() == 3
    x = image.unsqueeze(0) if single else image
    if mode == "nearest":
        out = F.interpolate(x, size=tuple(size), mode="nearest-exact")
    elif mode == "bilinear":
        out = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    else:
        raise ValueError(f"resize mode must be 'nearest' or 'bilinear', got {mode!r}")
    return out.squeeze(0) if single else out


def channel_shift(image: Tensor, shifts: Tensor, *, scale: float = 1.0, clip: str | None = "unit") -> Tensor:
    """Add ``shifts / scale`` per channel; shifts (C,) for (C,H,W) or (B,C) for a batch.

    scale=255 reproduces Keras, which shifted on the 0..255 scale before ``rescale=1/255``.
    clip: "unit" -> [0, 1]; "image" -> each image's own min..max over all channels (Keras'
    ``random_channel_shift``, which makes a +-0.1/255 shift effectively a no-op); None -> no clip.
    """
    single = image.dim() == 3
    x = image.unsqueeze(0) if single else image
    s = torch.as_tensor(shifts, dtype=x.dtype, device=x.device).reshape(-1, x.shape[1])
    out = x + (s / scale)[:, :, None, None]
    if clip == "unit":
        out = out.clamp(0.0, 1.0)
    elif clip == "image":
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        out = torch.minimum(torch.maximum(out, lo), hi)
    elif clip is not None:
        raise ValueError(f"clip must be 'unit', 'image' or None, got {clip!r}")
    return out.squeeze(0) if single else out


def _per_sample(params: dict, key: str, b: int) -> list[float] | None:
    """One float per sample of a batch of b (None: the parameter was not drawn)."""
    if key not in params:
        return None
    return torch.as_tensor(params[key], dtype=torch.float64).reshape(-1).expand(b).tolist()


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (C, H, W), sigma in pixels; the edges replicated."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, -1)
    c, h, w = x.shape
    y = F.conv1d(F.pad(x.reshape(c * h, 1, w), (r, r), mode="replicate"), k).view(c, h, w)
    y = y.transpose(1, 2).reshape(c * w, 1, h)
    return F.conv1d(F.pad(y, (r, r), mode="replicate"), k).view(c, w, h).transpose(1, 2)


def vendor_look(image: Tensor, params: dict, noise_rows: int = 0) -> Tensor:
    """Another device's look, in a scanner's order: resolution loss (blur, a share of the height), the
    export's window (a share of the histogram clipped at each end) and gamma, then quantum noise (sd of
    full scale at `noise_rows` rows, averaged down by a smaller working height). (C,H,W) or (B,C,H,W)."""
    single = image.dim() == 3
    x = image.unsqueeze(0) if single else image
    b, _, h, _ = x.shape
    blur, gamma, lo, hi, noise = (_per_sample(params, k, b) for k in ("blur", "gamma", "contrast", "contrast_hi",
                                                                       "noise"))
    seeds = torch.as_tensor(params.get("noise_seed", 0)).reshape(-1).expand(b).tolist()
    out = []
    for i in range(b):
        y = x[i]
        if blur and blur[i] * h > 0.1:   # below a tenth of a pixel a kernel changes nothing
            y = _blur(y, blur[i] * h)
        if lo:
            q = torch.quantile(y.flatten().float(), torch.tensor([lo[i], 1 - hi[i]], device=y.device))
            y = ((y - q[0].to(y.dtype)) / (q[1] - q[0]).clamp_min(1e-6).to(y.dtype)).clamp(0.0, 1.0)
        if gamma:
            y = y.clamp(0.0, 1.0) ** gamma[i]
        if noise:
            sd = noise[i] * (h / noise_rows if noise_rows else 1.0)
            g = torch.Generator().manual_seed(int(seeds[i]))
            y = (y + sd * torch.randn(y.shape[-2:], generator=g).to(y)).clamp(0.0, 1.0)   # one gray noise field
        out.append(y)
    out = torch.stack(out)
    return out.squeeze(0) if single else out


class Augment:
    """Random affine + channel shift, drawn per image (or per sample of a batch).

    ``draw`` returns parameters in ``apply_affine``'s names and units (plus ``channel_shift``),
    so a preview can label panels and TTA can be replayed with ``apply``. No normalisation here.
    """

    def __init__(self, cfg: AugmentConfig | str = "seed"):
        self.cfg = get_augment_config(cfg) if isinstance(cfg, str) else cfg

    def draw(self, generator: torch.Generator | None = None, batch: int | None = None, *,
             size: tuple[int, int] | None = None, channels: int = 3) -> dict:
        """Uniform draws, only where a range is non-zero, in Keras' order (theta, tx, ty, shear,
        zx, zy, channel shifts). Single: python floats (channel_shift (C,)); batch: (B,) / (B,C)."""
        cfg, n = self.cfg, batch or 1

        def u(r: float, k: int = 1) -> Tensor:  # U(-r, r), as numpy's low + (high - low) * u
            return -r + 2 * r * torch.rand(n, k, generator=generator, dtype=torch.float64).squeeze(-1)

        def const(v: float) -> Tensor:
            return torch.full((n,), v, dtype=torch.float64)

        if (cfg.shift_rows or cfg.shift_cols) and size is None:
            raise ValueError("draw needs size=(H, W) to turn shift fractions into pixels")
        p = {
            "theta": u(cfg.rotation) if cfg.rotation else const(0.0),
            "tx": u(cfg.shift_rows) * size[0] if cfg.shift_rows else const(0.0),
            "ty": u(cfg.shift_cols) * size[1] if cfg.shift_cols else const(0.0),
            "shear": u(cfg.shear) if cfg.shear else const(0.0),
        }
        if cfg.shear_units == "radians":
            p["shear"] = torch.rad2deg(p["shear"])
        if not cfg.zoom:
            p["zx"] = p["zy"] = const(1.0)
        elif cfg.zoom_independent:
            z = 1.0 + u(cfg.zoom, 2).view(n, 2)
            p["zx"], p["zy"] = z[:, 0], z[:, 1]
        else:
            p["zx"] = p["zy"] = 1.0 + u(cfg.zoom)
        p["channel_shift"] = (u(cfg.channel_shift, channels).view(n, channels) if cfg.channel_shift
                              else torch.zeros(n, channels, dtype=torch.float64))
        p["brightness"] = 1.0 + u(cfg.brightness) if cfg.brightness else const(1.0)
        # the vendor range, drawn last and only where asked: every other preset's draws stay as they were
        half = lambda r: (u(r) + r) / 2   # noqa: E731  (U(0, r))
        for name, draw in (("blur", half), ("gamma", lambda r: u(r).exp()), ("contrast", half),
                           ("noise", half)):
            if getattr(cfg, name):
                p[name] = draw(getattr(cfg, name))
        if cfg.contrast:
            p["contrast_hi"] = half(cfg.contrast)
        if cfg.noise:
            p["noise_seed"] = torch.randint(0, 2 ** 62, (n,), generator=generator, dtype=torch.int64)
        if batch is None:
            p = {k: (v[0] if k == "channel_shift" else int(v[0]) if k == "noise_seed" else float(v[0]))
                 for k, v in p.items()}
        return p

    def apply(self, image: Tensor, params: dict) -> Tensor:
        """Apply drawn ``params`` (as from ``draw``): geometry first, then channel shift (Keras' order)."""
        geo = {k: params[k] for k in ("theta", "tx", "ty", "shear", "zx", "zy")}
        out = apply_affine(image, **geo, fill=self.cfg.fill)
        if any(k in params for k in ("blur", "gamma", "contrast", "noise")):   # on the gray channel, once
            out = vendor_look(out, params, self.cfg.noise_rows)
        channels = torch.as_tensor(params["channel_shift"]).shape[-1]
        if out.shape[-3] == 1 and channels > 1:  # gray: warp one channel, then replicate (3x cheaper)
            out = out.expand(*out.shape[:-3], channels, *out.shape[-2:])
        if self.cfg.brightness:
            b = torch.as_tensor(params["brightness"], dtype=out.dtype, device=out.device)
            out = (out * b.reshape((-1,) + (1,) * (out.dim() - 1))).clamp(0.0, 1.0)
        if self.cfg.channel_shift:
            keras = self.cfg.channel_shift_scale == "uint8"
            out = channel_shift(out, params["channel_shift"], scale=255.0 if keras else 1.0,
                                clip="image" if keras else "unit")
        return out

    def __call__(self, image: Tensor, generator: torch.Generator | None = None, channels: int | None = None) -> Tensor:
        """``channels=3`` on a 1-channel image warps once and returns 3 channels with their own shifts."""
        batch = image.shape[0] if image.dim() == 4 else None
        params = self.draw(generator, batch, size=tuple(image.shape[-2:]), channels=channels or image.shape[-3])
        return self.apply(image, params)

    def __repr__(self) -> str:
        return f"Augment({self.cfg})"
