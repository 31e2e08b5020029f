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


def prepare_job(model, inputs, tta, score, batch_size, workers, device, id_column, on_bad_file, backend=None):
    """Checks before any image is read; (ensemble, paths, id_map)."""
    from vfa.inference.ensemble import Ensemble, load_ensemble

    if score not in SCORES or (score != "raw" and not tta):
        raise config_mod.ConfigError(f"score must be one of {SCORES} (tta_* need --tta N), got {score!r}")
    check_run_args(batch_size=batch_size, tta=tta, num_workers=0 if workers is None else workers)
    if on_bad_file not in ("error", "skip"):
        raise DataError(f"--on-bad-file must be 'error' or 'skip', got '{on_bad_file}'")
    ens = model if isinstance(model, Ensemble) else load_ensemble(model, device, backend=backend)
    id_map: dict = {}
    paths = expand_inputs(inputs, id_column, id_map)
    if id_column and not id_map:
        raise config_mod.ConfigError("--id-column needs a manifest CSV among the inputs")
    return ens, paths, id_map


def unusable_files(skipped: list[tuple[str, str]]) -> DataError:
    """The error that names every unusable input (the first 20) under --on-bad-file error."""
    listing = "\n".join(f"  {p}: {r}" for p, r in skipped[:20])
    more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
    return DataError(f"{len(skipped)} unusable file(s) among the inputs (use --on-bad-file skip to leave "
                     f"them out):\n{listing}{more}")


def check_decodable(ens, paths: list[str], positions: list[int], on_bad_file: str, workers: int, progress: bool, log):
    """The up-front decode of every file still to do; (good paths, their positions, skipped [(path, reason)])."""
    from vfa.data.stream import check_files

    cfg = ens.config.data
    bad = check_files(paths, cfg.frame, cfg.min_side, workers, progress)
    skipped = [(paths[i], reason) for i, reason in bad]
    if skipped and on_bad_file == "error":
        raise unusable_files(skipped)
    bad_idx = {i for i, _ in bad}
    keep = [i for i in range(len(paths)) if i not in bad_idx]
    return [paths[i] for i in keep], [positions[i] for i in keep], skipped


def output_rows(rows: pd.DataFrame, kinds, thr: float, score: str, id_map: dict, id_regex: str | None,
                keep_identifiers: bool, fingerprint: bool = True) -> pd.DataFrame:
    """Engine rows -> the columns vfa predict writes: image_id, file, the scores, predicted, each
    member's scores, DICOM identifiers (only with keep_identifiers), file size and mtime."""
    from vfa.inference.engine import identifier_columns, public_files

    paths = rows["path"].tolist()
    ids = [id_map.get(p, Path(p).as_posix()) for p in paths] if id_map else \
        image_ids(paths, None, id_regex, keep_identifiers)
    out = pd.DataFrame({"image_id": ids, "file": public_files(paths, keep_identifiers)})
    for k in kinds:
        out[k] = rows[k].to_numpy(np.float64)
    out["predicted"] = (out[score] >= thr).astype(int)
    for col in rows.columns:
        if col.startswith(tuple(f"{k}_" for k in kinds)) and col not in kinds:
            out[col] = rows[col].to_numpy(np.float64)
    if keep_identifiers:
        for key, values in identifier_columns(paths).items():
            out[key] = values
    if fingerprint:
        out["file_size"], out["file_mtime_ns"] = rows["size"].to_numpy(), rows["mtime_ns"].to_numpy()
    return out


def predict_files(model, inputs, tta: int = 0, tta_preset: str = "auto", seed: int = 0,
                  id_regex: str | None = None, score: str = "raw", batch_size: int = 16, num_workers: int | None = None,
                  on_bad_file: str = "skip", progress: bool = False, log=None, id_column: str | None = None,
                  keep_identifiers: bool = False, backend: str = "auto", device: str = "auto",
                  threshold: float | str = "model"):
    """A DataFrame (image_id, file, raw[, tta_mean, tta_max], predicted[, per-member scores]) for
    unlabeled images, in memory (`predict_to_file` streams to disk instead).

    `model`: a checkpoint, several (an ensemble), an ensemble file or loaded model(s).
    `predicted` is the class of `score` at the model's stored threshold (see `vfa calibrate`).
    Bad files are skipped (listed through `log`) or raise, per `on_bad_file`. Image IDs come from
    the file path (`id_regex`) or a manifest input's `id_column`; DICOM identifiers (PatientID,
    StudyDate, ...) are added as columns only with `keep_identifiers`. `backend`: see vfa.inference.
    """
    from vfa.data.stream import default_workers
    from vfa.inference.engine import Scorer, score_paths

    ens, paths, id_map = prepare_job(model, inputs, tta, score, batch_size, num_workers, device, id_column, on_bad_file,
                                     backend)
    thr = model_threshold(ens, threshold)
    workers = default_workers(len(paths), batch_size) if num_workers is None else num_workers
    good, _, skipped = check_decodable(ens, paths, list(range(len(paths))), on_bad_file, workers, progress, log)
    if not good:
        raise DataError(f"no images to predict: {len(paths)} file(s) found in the inputs"
                        + (f", all {len(skipped)} unusable" if skipped else ""))
    scorer = Scorer(ens, backend, len(good), good, tta, tta_preset, seed, log=log)
    rows, late = score_paths(scorer, good, batch_size, workers, progress)
    skipped += [(p, r) for _, p, r in late]
    for path, reason in skipped:
        (log or (lambda m: None))(f"skipped {path if keep_identifiers else public_path(path)}: {reason}")
    frame = output_rows(rows, scorer.kinds(), thr, score, id_map, id_regex, keep_identifiers, fingerprint=False)
    frame.attrs["skipped"], frame.attrs["backend"] = skipped, scorer.backend
    frame.attrs["backend_checks"] = scorer.checks
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
        return float(model.threshold)  # an Ensemble's is its stored one, or its single member's
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise config_mod.ConfigError(f"--threshold must be 'model' or a number in [0, 1], got {threshold!r}") from None
    if not 0 <= value <= 1:
        raise config_mod.ConfigError(f"--threshold must be in [0, 1], got {value}")
    return value


def check_run_args(batch_size: int = 1, tta: int = 0, num_workers: int = 0) -> None:
    """Refuse a nonsensical --batch-size, --tta or worker count before any work starts."""
    for name, value, low in (("--batch-size", batch_size, 1), ("--tta", tta, 0), ("workers", num_workers, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise config_mod.ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
