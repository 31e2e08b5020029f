"""`vfa augment-preview`: the notebook's "visually check image augmentation" cell as a labelled grid.

The notebook drew a training image through `train_datagen.flow` and showed three augmented
versions. Here each row is one image: the image as the network sees it (resized, no augmentation)
and then N augmented versions, each titled with the parameters that were drawn for it, in the
units `vfa.augment.apply_affine` uses. Augmentation is exactly the training pipeline's
(`ImageDataset.load` -> `Augment.draw` -> `Augment.apply`), so what is shown is what is trained on.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from vfa.config import ConfigError


def resolve(preset: str, size: tuple[int, int] | None = None):
    """(AugmentConfig, DataSpec) from a training preset (seed, keras215, cpu-demo, ...: its
    augmentation, overrides, input size, normalization and frame, through the one preprocessing
    factory) or an augmentation preset (tta, tta-keras215, none; 600x360 by default)."""
    from vfa import config as config_mod
    from vfa.data.augment import PRESETS, get_augment_config
    from vfa.data.transforms import DataSpec, resolve_data_config

    if preset in config_mod.PRESETS:
        cfg = config_mod.resolve(preset)
        return get_augment_config(cfg.augment, **cfg.augment_overrides), resolve_data_config(cfg, size)
    if preset in PRESETS:
        aug = get_augment_config(preset)
        return aug, DataSpec(tuple(size or (600, 360)), aug.resize)
    raise ConfigError(f"unknown preset {preset!r}: a training preset ({', '.join(config_mod.PRESETS)}) "
                      f"or an augmentation preset ({', '.join(PRESETS)})")


def label(params: dict) -> str:
    """The drawn parameters, short: rotation, row/column shift (px), shear, zoom (rows/cols), channel shift."""
    ch = ",".join(f"{v:+.2f}" for v in torch.as_tensor(params["channel_shift"]).tolist())
    return (f"rot {params['theta']:+.1f}°  shear {params['shear']:+.1f}°\n"
            f"shift rows {params['tx']:+.0f}, cols {params['ty']:+.0f} px\n"
            f"zoom {params['zx']:.3f}/{params['zy']:.3f}\nch {ch}")


def make_figure(paths: list[str], augment, spec, n: int = 8, seed: int = 0, title: str = ""):
    """A matplotlib figure: len(paths) rows x (1 + n) panels; returns (figure, drawn parameters per panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vfa.data.transforms import Transform

    transform = Transform(spec)
    size = spec.size
    gen = torch.Generator().manual_seed(seed)
    pw = 1.8  # inches per panel; room above each for its label
    fig, axes = plt.subplots(len(paths), n + 1, figsize=((n + 1) * pw, len(paths) * (pw * size[0] / size[1] + 0.9)),
                             squeeze=False)
    drawn = []
    for r, path in enumerate(paths):
        gray = transform.load(path)  # (1, H, W): read, normalized and resized as in training
        panels = [(gray.expand(3, -1, -1), f"{Path(path).name}\nas the network sees it")]
        for _ in range(n):
            params = augment.draw(gen, size=size, channels=3)
            drawn.append(params)
            panels.append((augment.apply(gray, params), label(params)))
        for ax, (img, text) in zip(axes[r], panels):
            ax.imshow(np.clip(img.permute(1, 2, 0).numpy(), 0, 1))  # 3 channels differ by the channel shift
            ax.set_title(text, fontsize=6, loc="left")
            ax.set(xticks=[], yticks=[])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig, drawn


def pick(data, k: int = 1) -> list[str]:
    """k images spread evenly over the sorted inputs (files, folders, globs); a folder's frac/ first,
    as the notebook looked at a fractured training image."""
    from vfa.data.samples import expand_inputs

    if Path(data).is_dir() and (Path(data) / "frac").is_dir():
        data = Path(data) / "frac"
    paths = expand_inputs(data)
    if not paths:
        raise FileNotFoundError(f"no images in {data}")
    k = min(max(1, k), len(paths))
    return [paths[i] for i in np.linspace(0, len(paths) - 1, k).round().astype(int)]


def augment_preview(data, out: str | Path, preset: str = "seed", n: int = 8, images: int = 1, seed: int = 0,
                    size: tuple[int, int] | None = None, force: bool = False, on_bad_file: str = "error",
                    log=print) -> list[dict]:
    """Write the grid PNG to `out`; returns the drawn parameters of every augmented panel.
    A picked image that cannot be read stops it (`on_bad_file` error) or is left out and reported."""
    import matplotlib.pyplot as plt

    from vfa.data.augment import Augment
    from vfa.data.samples import Samples, validate
    from vfa.runs import atomic_write, refuse_existing

    out = refuse_existing(out, force, inputs=[data])
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    cfg, spec = resolve(preset, size)
    paths = pick(data, images)
    picked = validate(Samples(paths, [0] * len(paths), ""), on_bad_file, frame=spec.frame)
    for path, reason in picked.skipped:
        log(f"skipped {path}: {reason}")
    if not picked.paths:
        raise ConfigError(f"{data}: none of the picked images can be read")
    fig, drawn = make_figure(picked.paths, Augment(cfg), spec, n, seed,
                             f"augmentation preset {preset!r} at {spec.size[0]}x{spec.size[1]} (seed {seed})")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(out, buf.getvalue())
    return drawn
