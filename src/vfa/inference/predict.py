"""Inference: stream predictions over images.

Models come from `vfa.checkpoint.load_model` (weights_only); the checkpoint's saved config fixes
the preprocessing (`vfa.data.transforms`); `vfa calibrate` may add a decision threshold and a
temperature, which every prediction here applies: P(fracture) = sigmoid(logit / T).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from vfa import config as config_mod
from vfa.models.loading import load_model  # noqa: F401  (vfa.inference.predict's API)
from vfa.data.dataset import create_dataset
from vfa.data.samples import DataError, Samples, expand_inputs, write_skipped  # noqa: F401  (expand_inputs: API)
from vfa.io.identifiers import public_path
from vfa.models.network import VFANet, p_fracture


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
        out.append((z if logits else p_fracture(z, temperature)).cpu())
    return torch.cat(out).numpy() if out else np.empty(0, dtype=np.float32)


def predict(model: VFANet, images, batch_size: int = 16, num_workers: int = 0, progress: bool = False,
            backend: str = "torch") -> np.ndarray:
    """P(fracture) for a list of image paths or a (B, 3, H, W) tensor already preprocessed to [0, 1].

    `backend`: torch (fp32, default here), torch-bf16, compile, onnxruntime, onnxruntime-int8 or auto
    (vfa.inference)."""
    if backend != "torch":
        from vfa.inference.backends import with_backend

        model = with_backend(model, backend, n_images=len(images) if hasattr(images, "__len__") else None,
                             calibration=[images] if isinstance(images, str | Path) else images)
    if isinstance(images, torch.Tensor):
        with torch.inference_mode():
            x = images.to(next(model.parameters()).device)
            return p_fracture(model(x), getattr(model, "temperature", 1.0)).cpu().numpy()
    if isinstance(images, str | Path):
        images = [images]
    loader = DataLoader(create_dataset(model, [str(p) for p in images]), batch_size=batch_size,
                        num_workers=num_workers)
    return predict_loader(model, loader, progress)


def image_ids(paths, root: str | Path | None = None, id_regex: str | None = None,
              keep_identifiers: bool = False) -> list[str]:
    """Image IDs: the path relative to `root` (the notebook's generator filenames, e.g. frac/x.png),
    or with `id_regex` its first capture group (the whole match without groups), searched in that
    relative path. This replaces the notebook's dataset-specific `filename[16:35]` slice. DICOM UIDs
    in file or folder names are replaced by a hash (`public_path`) unless `keep_identifiers`."""
    import re

    public = (lambda r: r) if keep_identifiers else public_path
    rel = [public(_relative(p, root)) for p in paths]
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
                  keep_identifiers: bool = False, backend: str = "auto", device: str = "auto",
                  threshold: float | str = "model"):
    """A DataFrame (image_id, file, raw[, tta_mean, tta_max], predicted) for unlabeled images.

    `predicted` is the class of `score` at the model's stored threshold (see `vfa calibrate`).
    Bad files are skipped (listed through `log`) or raise, per `on_bad_file`. Image IDs come from
    the file path (`id_regex`) or a manifest input's `id_column`; DICOM identifiers (PatientID,
    StudyDate, ...) are added as columns only with `keep_identifiers`. `backend`: see vfa.inference.
    """
    from vfa.data.samples import validate
    from vfa.inference.tta import tta_predict

    if score not in SCORES or (score != "raw" and not tta):
        raise config_mod.ConfigError(f"score must be one of {SCORES} (tta_* need --tta N), got {score!r}")
    check_run_args(batch_size=batch_size, tta=tta, num_workers=num_workers)

    if not isinstance(model, torch.nn.Module):
        model = load_model(model, device)
    thr = model_threshold(model, threshold)
    id_map: dict = {}
    paths = expand_inputs(inputs, id_column, id_map)
    if id_column and not id_map:
        raise config_mod.ConfigError("--id-column needs a manifest CSV among the inputs")
    samples = validate(Samples(paths, [0] * len(paths), "inputs", source="inputs"), on_bad_file,
                       frame=model.config.data.frame, min_side=model.config.data.min_side)
    for path, reason in samples.skipped:
        (log or (lambda m: None))(f"skipped {path if keep_identifiers else public_path(path)}: {reason}")
    if not samples.paths:
        raise DataError(f"no images to predict: {len(paths)} file(s) found in the inputs"
                        + (f", all {len(samples.skipped)} unusable (listed above)" if samples.skipped else ""))
    from vfa.inference.backends import with_backend

    runner = with_backend(model, backend, n_images=len(samples.paths) * (1 + tta), calibration=samples.paths)
    res = tta_predict(runner, create_dataset(model, samples.paths), tta, tta_preset, seed, batch_size,
                      num_workers, progress)
    ids = [id_map.get(p, Path(p).as_posix()) for p in samples.paths] if id_column else \
        image_ids(samples.paths, None, id_regex, keep_identifiers)
    files = samples.paths if keep_identifiers else [public_path(Path(p).as_posix()) for p in samples.paths]
    frame = pd.DataFrame({"image_id": ids, "file": files, "raw": res.raw.astype(np.float64)})
    if keep_identifiers:
        from vfa.io import is_dicom
        from vfa.io.identifiers import IDENTIFIER_KEYWORDS, dicom_identifiers

        found = [dicom_identifiers(p) if is_dicom(p) else {} for p in samples.paths]
        for key in IDENTIFIER_KEYWORDS:
            if any(key in f for f in found):
                frame[key] = [f.get(key, "") for f in found]
    if tta:
        frame["tta_mean"], frame["tta_max"] = res.mean.astype(np.float64), res.max.astype(np.float64)
    frame["predicted"] = (frame[score] >= thr).astype(int)
    frame.attrs["skipped"] = samples.skipped
    return frame


def read_predictions(path: str | Path, need_label: bool = True) -> pd.DataFrame:
    """A predictions CSV written by `vfa evaluate` (or `vfa predict`, which has no labels)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    frame = pd.read_csv(path).rename(columns={"p_fracture": "raw", "image": "image_id"})
    if need_label and "label" not in frame:
        raise config_mod.ConfigError(f"{path}: no 'label' column (it must come from vfa evaluate on labelled data)")
    if "image_id" not in frame or not any(s in frame for s in SCORES):
        raise config_mod.ConfigError(f"{path}: not a vfa predictions file (needs image_id and raw/tta_mean/tta_max)")
    return frame


def model_threshold(model, threshold: float | str = "model") -> float:
    """`predict --threshold`: "model" (the checkpoint's stored threshold, 0.5 unless `vfa calibrate`
    set one) or a number in [0, 1]."""
    if threshold in (None, "model"):
        return float(model.threshold)
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise config_mod.ConfigError(f"--threshold must be 'model' or a number in [0, 1], got {threshold!r}") from None
    if not 0 <= value <= 1:
        raise config_mod.ConfigError(f"--threshold must be in [0, 1], got {value}")
    return value


def predict_to_csv(model, inputs, out: str | Path, force: bool = False, **kwargs):
    """`vfa predict`: `predict_files` written to the CSV `out` (refused if it exists, unless `force`),
    and the skipped files with their reasons to OUT_skipped.csv. Returns (frame, skipped CSV or None)."""
    from vfa.runs import atomic_write, lock, refuse_existing

    out = refuse_existing(out, force, inputs=[model] + ([inputs] if isinstance(inputs, str | Path) else list(inputs)))
    skipped_csv = refuse_existing(out.with_name(out.stem + "_skipped.csv"), force)
    with lock(out):
        frame = predict_files(model, inputs, **kwargs)
        atomic_write(out, frame.to_csv(index=False))
        skipped = Samples([], [], "", skipped=frame.attrs["skipped"])
        write_skipped(skipped, skipped_csv, kwargs.get("keep_identifiers", False))
        if not skipped.skipped:
            skipped_csv = None
    return frame, skipped_csv


def check_run_args(batch_size: int = 1, tta: int = 0, num_workers: int = 0) -> None:
    """Refuse a nonsensical --batch-size, --tta or worker count before any work starts."""
    for name, value, low in (("--batch-size", batch_size, 1), ("--tta", tta, 0), ("workers", num_workers, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise config_mod.ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
