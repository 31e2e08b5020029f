"""Pictures of heatmaps: the notebook's JET overlay, side-by-side panels, file names, the gallery."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from vfa.explain.cam import METHOD_NAMES, cam_settings, iter_cams
from vfa.io.identifiers import public_path
from vfa.stats.metrics import outcomes


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


def select_gallery(frame, score: str, k: int = 4) -> dict[str, list[int]]:
    """Row positions of up to k true positives (most confident), false positives (most confident)
    and false negatives (least confident) of a predictions frame with label and predicted."""
    masks = outcomes(frame["label"].to_numpy(), frame["predicted"].to_numpy() == 1)
    p = frame[score].to_numpy()
    pick = {"true positives": masks["tp"], "false positives": masks["fp"], "false negatives": masks["fn"]}
    out = {}
    for name, sel in pick.items():
        idx = np.flatnonzero(sel)
        order = np.argsort(p[idx], kind="stable")
        out[name] = idx[order if name == "false negatives" else order[::-1]][:k].tolist()
    return out


DISPLAY_SIGMA = 0.015  # the gallery's display blur, a share of the image height (about a third of a vertebra)


def display_heat(heat: np.ndarray, sigma: float) -> np.ndarray:
    """The map as the gallery shows it: blurred (Gaussian, `sigma` px) and scaled to a maximum of 1.
    A fine-layer map (LayerCAM at stride 4) is a few one-pixel dots, invisible once the image is a
    thumbnail; blurred, each dot is a blob about a third of a vertebra across. Display only: the
    pointing game and the box mass are measured on the map itself."""
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(np.asarray(heat, dtype=np.float32), sigma)
    top = float(smooth.max())
    return smooth / top if top > 0 else smooth


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
            shown = display_heat(heat, DISPLAY_SIGMA * gray.shape[0])
            small = Image.fromarray(overlay(gray, shown, alpha)).resize(
                (max(1, round(gray.shape[1] * s)), max(1, round(gray.shape[0] * s))), Image.LANCZOS)
            ax.imshow(np.asarray(small), extent=(0, gray.shape[1], gray.shape[0], 0))
            py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)  # the pointing game's point
            ax.plot(px, py, "+", color="white", ms=9, mew=1.6)
            ax.set(xlim=(0, gray.shape[1]), ylim=(gray.shape[0], 0))  # the marker must not widen the view
            for x0, y0, x1, y1 in (boxes or {}).get(os.path.realpath(path), []):
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=0.8))
            ax.text(0.02, 0.98, f"p={p:.2f}", color="white", fontsize=8, va="top", transform=ax.transAxes,
                    bbox=dict(fc="black", alpha=0.5, lw=0, pad=1))
            ax.set_xlabel(public_path(Path(path).name), fontsize=6)  # never a file's DICOM UID
    title = f"{METHOD_NAMES[method]} on {'the last feature map' if layer == 'auto' else layer} (JET, alpha {alpha})"
    shown = "shown blurred, Gaussian \u03c3 = 1.5 % of the height; +: the map's peak (pointing game)"
    fig.suptitle(title + ("; white boxes: fractured vertebrae" if boxes else "") + "\n" + shown, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
