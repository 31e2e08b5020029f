"""Inference: load a checkpoint safely and stream predictions over images.

Checkpoints are read with `torch.load(weights_only=True)`: tensors and plain containers only,
never pickled code. The checkpoint's saved config fixes the preprocessing (size, resize mode);
`vfa calibrate` may add a decision threshold and a temperature (plain floats), which every
prediction here applies: P(fracture) = sigmoid(logit / T).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vfa import config as config_mod
from vfa.augment import get_augment_config
from vfa.data import ImageDataset, Samples
from vfa.model import VFANet, build_from_config


def load_model(path: str | Path, device: str | torch.device = "cpu") -> VFANet:
    """A VFANet in eval mode with `model.config`, `model.threshold` (default 0.5),
    `model.temperature` (default 1.0) and `model.threshold_source` attached."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a loadable vfa checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt.get("hyper_parameters", {}):
        raise ValueError(f"{path}: not a vfa checkpoint (no state_dict/config)")
    cfg = config_mod.from_dict(ckpt["hyper_parameters"]["config"])
    cfg.model.pretrained = False  # weights come from the checkpoint, never from a hub
    model = build_from_config(cfg.model)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.config = cfg
    model.threshold = float(ckpt.get("vfa_threshold", 0.5))
    model.temperature = float(ckpt.get("vfa_temperature", 1.0))
    model.threshold_source = str(ckpt.get("vfa_threshold_source", "default 0.5 (as the notebook)"))
    return model.eval().to(device)


def eval_dataset(model: VFANet, paths: list[str], labels: list[int] | None = None) -> ImageDataset:
    cfg = model.config
    resize_mode = get_augment_config(cfg.augment, **cfg.augment_overrides).resize
    samples = Samples(list(paths), list(labels) if labels is not None else [-1] * len(paths), "")
    # the checkpoint's normalization and frame: predict reads exactly as training did
    return ImageDataset(samples, cfg.data.size, None, resize_mode=resize_mode,
                        normalize=getattr(cfg.data, "normalize", "seed"), frame=getattr(cfg.data, "frame", None))


@torch.inference_mode()
def predict_loader(model: VFANet, loader, progress: bool = False, logits: bool = False) -> np.ndarray:
    """P(fracture) for every item of a DataLoader yielding (image, label, index); memory is O(batch).

    logits=True returns the raw logits (no temperature), as `vfa calibrate` fits on them."""
    device = next(model.parameters()).device
    temperature = float(getattr(model, "temperature", 1.0))
    out = []
    iterator = loader
    if progress:
        from tqdm import tqdm
        iterator = tqdm(loader, desc="predict", unit="batch")
    for x, *_ in iterator:
        z = model(x.to(device)).float()
        out.append((z if logits else torch.sigmoid(z / temperature)).cpu())
    return torch.cat(out).numpy() if out else np.empty(0, dtype=np.float32)


def predict(model: VFANet, images, batch_size: int = 16, num_workers: int = 0, progress: bool = False,
            backend: str = "torch") -> np.ndarray:
    """P(fracture) for a list of image paths or a (B, 3, H, W) tensor already preprocessed to [0, 1].

    `backend`: torch (fp32, default here), torch-bf16, compile, onnxruntime, onnxruntime-int8 or auto
    (vfa.inference)."""
    if backend != "torch":
        from vfa.inference import with_backend

        model = with_backend(model, backend, n_images=len(images) if hasattr(images, "__len__") else None,
                             calibration=[images] if isinstance(images, str | Path) else images)
    if isinstance(images, torch.Tensor):
        with torch.inference_mode():
            x = images.to(next(model.parameters()).device)
            return torch.sigmoid(model(x).float() / float(getattr(model, "temperature", 1.0))).cpu().numpy()
    if isinstance(images, str | Path):
        images = [images]
    loader = DataLoader(eval_dataset(model, [str(p) for p in images]), batch_size=batch_size,
                        num_workers=num_workers)
    return predict_loader(model, loader, progress)


def expand_inputs(inputs, id_column: str | None = None, ids: dict | None = None) -> list[str]:
    """Files, folders (recursively: image files, DICOM by extension or by its DICM magic), manifest
    CSVs (their path column; 'FILE.csv:SPLIT' for one split) and globs -> sorted, de-duplicated
    paths. With `id_column`, `ids` receives path -> that manifest column."""
    import glob

    from vfa.data import is_manifest, load_samples
    from vfa.io import is_image_file

    paths: list[str] = []
    for item in [inputs] if isinstance(inputs, str | Path) else inputs:
        p = Path(item)
        if is_manifest(item):
            s = load_samples(item, split="all", id_column=id_column, labels=False)  # FILE.csv:SPLIT wins
            paths += s.paths
            if ids is not None and id_column:
                ids.update(zip(s.paths, s.ids()))
        elif p.is_dir():
            paths += sorted(str(f) for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                            and is_image_file(f))
        elif p.exists():
            paths.append(str(p))
        else:
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                raise FileNotFoundError(f"no such file, folder or glob match: {item}")
            paths += matches
    return list(dict.fromkeys(paths))


def image_ids(paths, root: str | Path | None = None, id_regex: str | None = None) -> list[str]:
    """Image IDs: the path relative to `root` (the notebook's generator filenames, e.g. frac/x.png),
    or with `id_regex` its first capture group (the whole match without groups), searched in that
    relative path. This replaces the notebook's dataset-specific `filename[16:35]` slice."""
    import re

    rel = [_relative(p, root) for p in paths]
    if not id_regex:
        return rel
    try:
        rx = re.compile(id_regex)
    except re.error as exc:
        raise config_mod.ConfigError(f"--id-regex {id_regex!r} is not a valid regular expression: {exc}") from None
    out = []
    for r in rel:
        m = rx.search(r)
        if m is None:
            raise config_mod.ConfigError(f"--id-regex {id_regex!r} does not match {r}")
        out.append(m.group(1) if rx.groups else m.group(0))
    return out


def _relative(path, root) -> str:
    if root:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:  # a manifest may list files outside its folder
            pass
    return Path(path).as_posix()


SCORES = ("raw", "tta_mean", "tta_max")


def predict_files(model: VFANet | str | Path, inputs, tta: int = 0, tta_preset: str = "tta", seed: int = 0,
                  id_regex: str | None = None, score: str = "raw", batch_size: int = 16, num_workers: int = 0,
                  on_bad_file: str = "skip", progress: bool = False, log=None, id_column: str | None = None,
                  keep_identifiers: bool = False, backend: str = "auto"):
    """A DataFrame (image_id, file, raw[, tta_mean, tta_max], predicted) for unlabeled images.

    `predicted` is the class of `score` at the model's stored threshold (see `vfa calibrate`).
    Bad files are skipped (listed through `log`) or raise, per `on_bad_file`. Image IDs come from
    the file path (`id_regex`) or a manifest input's `id_column`; DICOM identifiers (PatientID,
    StudyDate, ...) are added as columns only with `keep_identifiers`. `backend`: see vfa.inference.
    """
    import pandas as pd

    from vfa.data import validate
    from vfa.tta import tta_predict

    if score not in SCORES or (score != "raw" and not tta):
        raise config_mod.ConfigError(f"score must be one of {SCORES} (tta_* need --tta N), got {score!r}")

    if not isinstance(model, torch.nn.Module):
        model = load_model(model)
    id_map: dict = {}
    paths = expand_inputs(inputs, id_column, id_map)
    if id_column and not id_map:
        raise config_mod.ConfigError("--id-column needs a manifest CSV among the inputs")
    samples = validate(Samples(paths, [0] * len(paths), "inputs", source="inputs"), on_bad_file,
                       frame=getattr(model.config.data, "frame", None))
    for path, reason in samples.skipped:
        (log or (lambda m: None))(f"skipped {path}: {reason}")
    from vfa.inference import with_backend

    runner = with_backend(model, backend, n_images=len(samples.paths) * (1 + tta), calibration=samples.paths)
    res = tta_predict(runner, eval_dataset(model, samples.paths), tta, tta_preset, seed, batch_size,
                      num_workers, progress)
    ids = [id_map.get(p, Path(p).as_posix()) for p in samples.paths] if id_column else \
        image_ids(samples.paths, None, id_regex)
    frame = pd.DataFrame({"image_id": ids, "file": samples.paths, "raw": res.raw.astype(np.float64)})
    if keep_identifiers:
        from vfa.io import is_dicom
        from vfa.io.dicom import IDENTIFIER_KEYWORDS, dicom_identifiers

        found = [dicom_identifiers(p) if is_dicom(p) else {} for p in samples.paths]
        for key in IDENTIFIER_KEYWORDS:
            if any(key in f for f in found):
                frame[key] = [f.get(key, "") for f in found]
    if tta:
        frame["tta_mean"], frame["tta_max"] = res.mean.astype(np.float64), res.max.astype(np.float64)
    frame["predicted"] = (frame[score] >= model.threshold).astype(int)
    frame.attrs["skipped"] = samples.skipped
    return frame


from vfa._callable import make_callable  # noqa: E402

make_callable(__name__, "predict")
