"""Images streamed for inference at archive scale: decoded in DataLoader workers, once per file
whatever the number of models, and checked up front in the same workers.

`FileViews` yields, per file, one preprocessed tensor per distinct model input (`views`: the
transforms of an ensemble's members, de-duplicated), the file's position in the job's input list
(which seeds TTA and orders sharded output) and its size and mtime (which let a resumed job know
the file is the one it already predicted). A file that fails to decode at this point (changed
since the check) comes back as a reason instead of raising in a worker.
"""
from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset

from vfa.data.transforms import Transform
from vfa.io import BadImageError, inspect_file
from vfa.io.images import MIN_SIDE

MAX_WORKERS = 8  # decoding keeps up with the model long before this; more only costs memory


def default_workers(n_files: int, batch_size: int = 16) -> int:
    """The CPU count, capped; none (decode in the main process) for a job of one or two batches."""
    if n_files <= 2 * batch_size:
        return 0
    return min(MAX_WORKERS, os.cpu_count() or 1)


def fingerprint(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns)


class FileViews(Dataset):
    """(views tuple, position, size, mtime_ns, reason) per file; views None when reason is set."""

    def __init__(self, paths: list[str], transforms: list[Transform], positions: list[int] | None = None):
        self.paths, self.transforms = paths, transforms
        self.positions = positions if positions is not None else list(range(len(paths)))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path, pos = self.paths[i], self.positions[i]
        try:
            size, mtime = fingerprint(path)
            decoded: dict = {}
            views = []
            for t in self.transforms:  # one decode per (frame, normalize); one resize per input size
                key = (t.spec.frame, t.spec.normalize)
                if key not in decoded:
                    decoded[key] = t.read(path)
                views.append(t.prepare(decoded[key]))
            return tuple(views), pos, size, mtime, None
        except BadImageError as exc:
            return None, pos, 0, 0, exc.reason
        except OSError as exc:
            return None, pos, 0, 0, f"cannot read ({type(exc).__name__}: {exc.strerror or exc})"


def collate_views(items):
    """A batch: (views, positions, sizes, mtimes) of the good files, and [(position, reason)] of the bad."""
    ok = [it for it in items if it[4] is None]
    bad = [(it[1], it[4]) for it in items if it[4] is not None]
    views = tuple(torch.stack([it[0][k] for it in ok]) for k in range(len(ok[0][0]))) if ok else ()
    return views, [it[1] for it in ok], [it[2] for it in ok], [it[3] for it in ok], bad


def view_loader(dataset: Dataset, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_views,
                      pin_memory=pin_memory, prefetch_factor=4 if workers else None)


class _Inspect(Dataset):
    def __init__(self, paths, frame, min_side):
        self.paths, self.frame, self.min_side = paths, frame, min_side

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        r = inspect_file(self.paths[i], self.frame, self.min_side)
        return i, r["reason"]


def check_files(paths: list[str], frame: int | None = None, min_side: int = MIN_SIDE, workers: int = 0,
                progress: bool = False) -> list[tuple[int, str]]:
    """Decode every file once before a long job, in `workers` processes: [(index, reason)] of the
    unusable ones. Memory is O(bad files), not O(files)."""
    loader = DataLoader(_Inspect(paths, frame, min_side), batch_size=32, num_workers=workers, collate_fn=_as_list)
    bar = None
    if progress and paths:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc="check files", unit="file")
    bad = []
    for batch in loader:
        bad += [(i, reason) for i, reason in batch if reason is not None]
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return bad


def _as_list(items):
    return items
