"""The inference loop every command shares: files -> batches -> every member's scores -> rows.

`Scorer` runs one batch through each member of an `Ensemble` (on its backend, with TTA) and
combines; `iter_rows` streams a file list through DataLoader workers and yields one DataFrame of
rows per batch, so a caller can append it to an output (`vfa predict`), collect it (`predict_files`,
`vfa evaluate`) or hand it to Lightning's prediction writer (sharded runs). Memory is O(batch).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vfa.data.augment import Augment
from vfa.data.stream import FileViews, view_loader
from vfa.data.transforms import create_transform
from vfa.inference.backends import backend_record, with_backend
from vfa.inference.ensemble import Ensemble
from vfa.inference.tta import tta_batch, tta_config, tta_name
from vfa.io.identifiers import public_path
from vfa.models.network import model_device

KINDS = ("raw", "tta_mean", "tta_max")


class Scorer:
    """Each member of `ens` on `backend` (resolved per job size, device and member: `auto` verifies its
    candidate per member, vfa.inference.backends.auto_backend), TTA with `tta` passes. `log` takes
    auto's fallback line."""

    def __init__(self, ens: Ensemble, backend: str = "auto", n_images: int | None = None, calibration=None,
                 tta: int = 0, tta_preset: str = "auto", seed: int = 0, log=None):
        self.ens, self.tta, self.seed = ens, tta, seed
        self.device = model_device(ens.members[0])
        work = None if n_images is None else n_images * (1 + tta) * len(ens)
        self.runners = [with_backend(m, backend, work, calibration, _member_log(log, name, len(ens)))
                        for m, name in zip(ens.members, ens.names)]
        # each member its own TTA (tta_preset "auto"/"train" follow each one's training augmentation)
        self.tta_preset = tta_name(tta_preset, ens.members) if tta else None
        self.augments = [Augment(tta_config(tta_preset, m.config)) for m in ens.members]
        self.transforms, self.view_of = [], []
        for m in ens.members:  # members that share preprocessing share one view of each image
            t = create_transform(m)
            same = [k for k, u in enumerate(self.transforms) if u.spec == t.spec]
            if not same:
                self.transforms.append(t)
            self.view_of.append(same[0] if same else len(self.transforms) - 1)

    @property
    def checks(self) -> list[dict]:
        """Per member, what ran: {"backend", and for auto its check (candidate, max_dp, tolerance,
        checked_on, fallback) or why it chose fp32}. Final once the first batch is scored."""
        return [{"member": name, **backend_record(r)} for name, r in zip(self.ens.names, self.runners)]

    @property
    def backend(self) -> str:
        """The backend that ran: one name, or member:name pairs where the members' differ."""
        used = [c["backend"] for c in self.checks]
        if len(set(used)) == 1:
            return used[0]
        return ", ".join(f"{c['member']}:{c['backend']}" for c in self.checks)

    def kinds(self) -> tuple[str, ...]:
        return KINDS if self.tta else KINDS[:1]

    def __call__(self, views, positions: list[int]) -> dict[str, np.ndarray]:
        """Column -> (B,) float64: the combined kinds, then per member (when there are several)."""
        member: dict[str, list] = {k: [] for k in self.kinds()}
        for runner, v, augment in zip(self.runners, self.view_of, self.augments):
            x = views[v].to(self.device, non_blocking=True)
            raw, passes = tta_batch(runner, x, positions, self.tta, augment, self.seed)
            member["raw"].append(raw.numpy())
            if self.tta:
                passes = passes.numpy()
                member["tta_mean"].append(passes.mean(1))
                member["tta_max"].append(passes.max(1))
        cols = {k: self.ens.combined(np.stack(v, 1)) for k, v in member.items()}
        if len(self.ens) > 1:
            for k, values in member.items():
                for name, col in zip(self.ens.names, values):
                    cols[f"{k}_{name}"] = col.astype(np.float64)
        return cols


def _member_log(log, name: str, members: int):
    """An ensemble member's log: its lines name it."""
    if members == 1:
        return log
    base = log or (lambda message: print(message, file=sys.stderr, flush=True))
    return lambda message: base(f"{name}: {message}")


def iter_rows(scorer: Scorer, paths: list[str], positions: list[int] | None = None, batch_size: int = 16,
              workers: int = 0, progress: bool = False, desc: str = "predict"):
    """Yield (rows, bad) per batch: rows a DataFrame (position, path, size, mtime_ns, score columns);
    bad [(position, reason)] for files that failed to decode now (they were fine when checked)."""
    data = FileViews(paths, scorer.transforms, positions)
    loader = view_loader(data, batch_size, workers, pin_memory=scorer.device.type == "cuda")
    path_at = dict(zip(data.positions, paths)) if positions is not None else None
    bar = None
    if progress and paths:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc=desc + (f" + TTA x{scorer.tta}" if scorer.tta else ""), unit="img")
    path_of = path_at.__getitem__ if path_at else paths.__getitem__
    for views, pos, sizes, mtimes, bad in loader:
        rows = batch_rows(scorer, (views, pos, sizes, mtimes), path_of)
        if bar is not None:
            bar.update(len(pos) + len(bad))
        yield rows, [(p, path_of(p), r) for p, r in bad]
    if bar is not None:
        bar.close()


def batch_rows(scorer: Scorer, batch, path_of) -> pd.DataFrame:
    """One collated batch (views, positions, sizes, mtimes) -> rows: position, path, size,
    mtime_ns and the scorer's columns. `path_of(position)` names the file."""
    views, pos, sizes, mtimes = batch[:4]
    rows = pd.DataFrame({"position": pos, "path": [path_of(p) for p in pos], "size": sizes, "mtime_ns": mtimes})
    if pos:
        for col, values in scorer(views, pos).items():
            rows[col] = values
    return rows


def public_files(paths, keep_identifiers: bool = False) -> list[str]:
    return [Path(p).as_posix() if keep_identifiers else public_path(Path(p).as_posix()) for p in paths]


def identifier_columns(paths) -> dict[str, list[str]]:
    """DICOM PatientID, StudyDate, ... per file (for --keep-identifiers); only the keywords found."""
    from vfa.io import is_dicom
    from vfa.io.identifiers import IDENTIFIER_KEYWORDS, dicom_identifiers

    found = [dicom_identifiers(p) if is_dicom(p) else {} for p in paths]
    return {key: [f.get(key, "") for f in found] for key in IDENTIFIER_KEYWORDS if any(key in f for f in found)}


@torch.inference_mode()
def score_paths(scorer: Scorer, paths: list[str], batch_size: int = 16, workers: int = 0,
                progress: bool = False) -> tuple[pd.DataFrame, list]:
    """All rows of `paths` in memory (in input order) and the files that failed to decode."""
    frames, bad = [], []
    for rows, b in iter_rows(scorer, paths, None, batch_size, workers, progress):
        frames.append(rows)
        bad += b
    cols = ["position", "path", "size", "mtime_ns", *scorer.kinds()]
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)), bad
