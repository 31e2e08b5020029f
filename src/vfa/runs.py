"""Run directories and output files: never overwritten without --force, written atomically,
self-describing; plus the on-disk cache for exported graphs and compiled kernels."""
from __future__ import annotations

import contextlib
import fnmatch
import glob
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vfa import config as config_mod


def is_secondary_rank() -> bool:
    """True in DDP worker processes (re-launched by Lightning, torchrun or SLURM) that must not touch files."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


# Marks a folder vfa wrote: `--force` replaces outputs only in such a folder, and only vfa's own files.
MARKER = ".vfa-output.json"
# What each command writes into its --out folder (names, or globs for families of files): what
# `--force` may replace. Anything else in the folder (a user's notes, a dataset) is never touched.
OUTPUTS = {
    "train": ("config.yaml", "environment.json", "history.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
              "checkpoints/last.ckpt.prev", "checkpoints/hpc_ckpt_*.ckpt", "checkpoints/.*.tmp", ".*.tmp",
              "curves_metrics.png", "curves_loss.png", "skipped_*.csv", "test_metrics.json", "test_predictions.csv",
              "test_skipped.csv", "logs/csv/*/*", "logs/tensorboard/*", "logs/mlflow_run_id.txt", "test_vertebra*"),
    "evaluate": ("metrics.json", "predictions.csv", "skipped.csv", "final_results.xlsx", "report.html",
                 "roc.png", "confusion_matrix.png", "sn_sp_threshold.png", "reliability.png", "heatmap_gallery.png",
                 "test_fnames.npy", "test_classes.npy", "test_preds.npy", "test_max_preds.npy", "test_mean_preds.npy",
                 "vertebrae.csv", "vertebra_matches.csv", "vertebra_report.*", "overlays/*.png"),
    "lr-find": ("lr_find.png", "lr_find.json", "lr_find.csv"),
    "heatmap": ("heatmaps.csv", "localization.json", "**/heatmap_*", "**/panel_*"),
    "synth": ("manifest.csv", "vertebrae.csv", "*/norm/phantom_*", "*/frac/phantom_*"),
    "cohort": ("cohort.json", "cohort.xlsx", "exclusions.csv", "km*.png", "cumulative_incidence*.png", "forest.png",
               "cohort_report.html"),
    "cv": ("cv_config.yaml", "cv_summary.json", "cv_folds.csv", "oof_predictions.csv", "cv_roc.png",
           "cv_report.html", "ensemble.yaml"),
}
# Folders vfa wrote before it marked them, recognised by content only vfa writes: (file, text in it).
LEGACY_SIGNS = {"train": ("environment.json", '"lightning"'), "evaluate": ("metrics.json", '"threshold_source"'),
                "lr-find": ("lr_find.json", '"suggested_lr"'), "heatmap": ("heatmaps.csv", "file,p_fracture,heatmap"),
                "synth": ("manifest.csv", "fractured_boxes")}
# Output folders that belong to the folder they are nested in (a run's evaluations, heatmaps):
# `--force` on the outer folder clears these too. Other nested vfa folders (runs, phantoms) are kept.
DERIVED = ("evaluate", "heatmap", "lr-find", "cohort")


def _input_path(item) -> Path | None:
    if item is None or item == "":
        return None
    text = str(item)
    if ".csv:" in text:  # MANIFEST.csv:SPLIT
        text = text.rsplit(":", 1)[0]
    return Path(text).resolve()


def check_out(out: str | Path, inputs=(), kind: str = "folder") -> Path:
    """Refuse an --out that would destroy what the command reads or where it runs: a symbolic
    link; the current folder or one that contains it; one that equals or contains an input (data
    folder, manifest, model); an output folder inside an input folder; a file where a folder is
    written, or the reverse. Called before anything is written."""
    from vfa.errors import ConfigError

    out = Path(out)
    if out.is_symlink():
        raise ConfigError(f"--out {out} is a symbolic link; give the real path it points to")
    o, cwd = out.resolve(), Path.cwd().resolve()
    if kind == "folder" and (o == cwd or cwd.is_relative_to(o)):
        raise ConfigError(f"--out {out} is the current folder or contains it; give a new folder for the outputs")
    for item in inputs:
        r = _input_path(item)
        if r is None:
            continue
        if not r.exists() and any(c in str(item) for c in "*?["):  # a glob: --out may not be one of its
            # files, now or once written (a rerun would read it back), nor hold one; `*` crosses folders
            # in a `**` pattern here (fnmatch): when in doubt, refuse
            pattern = os.path.join(cwd, str(item))  # as expand_inputs globs it
            if any(fnmatch.fnmatchcase(str(p), pattern) if "**" in pattern else p.match(pattern)
                   for p in (o, out.absolute())):
                raise ConfigError(f"--out {out} matches the input {item}; outputs never go where their inputs are")
            inside = kind == "folder" and next((m for m in glob.iglob(str(item), recursive=True)
                                                if Path(m).resolve().is_relative_to(o)), None)
            if inside:
                raise ConfigError(f"--out {out} contains {inside}, an input ({item}); outputs never go where "
                                  "their inputs are")
            continue
        if o == r or r.is_relative_to(o):
            raise ConfigError(f"--out {out} {'is' if o == r else 'contains'} the input {item}; "
                              "outputs never go where their inputs are")
        if kind == "folder" and r.is_dir() and o.is_relative_to(r):  # a file beside the inputs replaces none
            raise ConfigError(f"--out {out} lies inside the input folder {item}; write the outputs elsewhere")
    if kind == "folder" and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; this command writes a folder")
    if kind == "file" and out.is_dir():
        raise ConfigError(f"--out {out} is a folder; this command writes a file")
    return out


def refuse_existing(path: str | Path, force: bool, inputs=()) -> Path:
    """The one "exists, pass --force" guard for single output files (after `check_out` against
    `inputs`): raises FileExistsError unless `force`; the caller replaces the file atomically."""
    path = check_out(path, inputs, "file")
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    return path


def prepare_run_dir(path: Path, force: bool, inputs=(), command: str = "train", ddp: bool = False) -> None:
    """Make `path` ready for `command`'s outputs. A non-empty folder needs `force`, and `force`
    only replaces what vfa wrote there: the folder must carry vfa's marker, and only the
    command's own output files are removed (never the tree); the new ones are written atomically."""
    path = check_out(path, inputs, "folder")
    if ddp and is_secondary_rank():  # only training runs under DDP; other commands never skip this
        return
    if path.exists() and any(path.iterdir()):
        if not force:
            raise FileExistsError(f"{path} already exists and is not empty; pass --force to replace vfa's "
                                  "outputs in it")
        if marked(path) != command:
            raise FileExistsError(f"{path} is not empty and holds no vfa {command} outputs (no {MARKER}); --force "
                                  "only replaces vfa's own outputs: choose another --out")
        remove_outputs(path, command)
    path.mkdir(parents=True, exist_ok=True)
    mark(path, command)


def mark(path: Path, command: str) -> None:
    atomic_write(Path(path) / MARKER, json.dumps({"command": command, "vfa": _version()}, indent=2))


def marked(path: Path) -> str | None:
    """The command whose outputs `path` holds, from its marker (or, for folders written before
    markers, from the files it holds); None when vfa did not write it."""
    try:
        return json.loads((Path(path) / MARKER).read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        pass
    for command, (name, sign) in LEGACY_SIGNS.items():
        try:
            with open(Path(path) / name, errors="replace") as f:
                head = f.read(4096)
        except OSError:
            continue
        if sign in head and (command != "synth" or any(Path(path).glob("*/*/phantom_*"))):
            return command
    return None


def remove_outputs(path: Path, command: str) -> list[Path]:
    """Delete `command`'s output files in `path` (OUTPUTS), and those of the vfa output folders
    nested in it (a run's evaluations and heatmaps), nothing else; returns what was removed."""
    gone = []
    for pattern in OUTPUTS.get(command, ()):
        for f in sorted(path.glob(pattern)):
            if f.is_file() and not f.is_symlink():
                f.unlink()
                gone.append(f)
    for sub in sorted(d for d in path.iterdir() if d.is_dir() and not d.is_symlink()):
        inner = marked(sub)
        if inner in DERIVED:
            removed = remove_outputs(sub, inner)
            (sub / MARKER).unlink(missing_ok=True)
            gone += removed
            _remove_emptied_dirs(sub, removed)
    return gone


def remove_temporaries(path: Path, *subfolders: str) -> list[Path]:
    """Temporary files `atomic_write` left in `path` (and the named subfolders, not deeper: nested
    output folders may belong to commands still running) when its process was killed mid-write."""
    gone = [f for d in (Path(path), *(Path(path) / s for s in subfolders)) for f in d.glob(".*.tmp") if f.is_file()]
    for f in gone:
        f.unlink(missing_ok=True)
    return gone


def _remove_emptied_dirs(top: Path, removed: list[Path]) -> None:
    """Remove the folders that removing `removed` left empty, up to and including `top`; a folder
    that was empty before (a user's) stays."""
    dirs = {p for f in removed for p in f.parents if p == top or top in p.parents}
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


# The lock descriptors this process holds. A flock belongs to the open file, which a fork shares: a
# DataLoader worker forked by a run would keep its lock held after a kill -9 of the run, for the seconds
# the orphan takes to notice, and refuse an immediate --resume. So every forked child closes them at
# once (exec'd children never get them: os.open's descriptors are not inheritable).
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def _ended(owner: dict) -> bool:
    """Whether a lock's recorded owner is a process of this host that has ended."""
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return owner.get("host") == platform.node()
    except (OSError, KeyError, ValueError, TypeError, OverflowError):  # another user's (EPERM), or no PID
        pass
    return False


class lock:
    """`with lock(out):` refuses a second vfa process writing the same output (a folder or a file),
    with an advisory `flock` on a file beside it (`.NAME.vfa-lock`, holding the owner's PID, host
    and start time for the message). The kernel releases it when its process ends, however it ends,
    and no forked child keeps it (`_HELD`), so a killed run leaves no lock to clear. `ddp=True`
    (training only): secondary DDP ranks skip it."""

    ORPHAN_GRACE_S = 10.0  # a lock held though its owner has ended: held by an orphan it left; they end soon

    def __init__(self, target: str | Path, ddp: bool = False):
        target = Path(target).absolute()
        if not target.name:
            from vfa.errors import ConfigError
            raise ConfigError(f"--out {target} is not a place for outputs")
        self.path = target.with_name(f".{target.name}.vfa-lock")  # beside it: a folder's lock is not in it
        self.target, self.ddp, self.fd, self.pid = target, ddp, None, None

    def __enter__(self):
        if self.ddp and is_secondary_rank():
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = None
        while (fd := self._try()) is None:
            owner = self._owner()
            if not _ended(owner):
                raise FileExistsError(f"{self.target} is being written by another vfa process (PID "
                                      f"{owner.get('pid')} on {owner.get('host')} since {owner.get('started')}); "
                                      "wait for it to finish")
            deadline = deadline or time.monotonic() + self.ORPHAN_GRACE_S
            if time.monotonic() >= deadline:
                raise FileExistsError(
                    f"{self.target} is locked by {self.path} for vfa process PID {owner.get('pid')} (since "
                    f"{owner.get('started')}), which is no longer running: a process it started still holds the "
                    f"lock (find it with: fuser -v {self.path}); end that process, or wait for it, and rerun")
            time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": platform.node(), "started": _now()}).encode())
        self.fd, self.pid = fd, os.getpid()
        _HELD.add(fd)
        return self

    def _try(self) -> int | None:
        """The locked descriptor of the lock file, or None while another holds it."""
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return None
            try:  # the file may have been removed by its previous holder between our open and flock
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def __exit__(self, *exc):
        # only in the process that took it: a forked child's copy of this object holds nothing
        if self.fd is not None and self.pid == os.getpid():
            self.path.unlink(missing_ok=True)  # while still held: a waiting opener then sees it gone
            _HELD.discard(self.fd)
            os.close(self.fd)
        self.fd = None
        return False

    def _owner(self) -> dict:
        with contextlib.suppress(OSError, ValueError):
            owner = json.loads(self.path.read_text() or "{}")
            return owner if isinstance(owner, dict) else {}
        return {}


def _now() -> str:
    import datetime
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _version() -> str:
    from vfa import __version__
    return __version__


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a crash leaves the old file or the new one
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs are meant to be shared like any file
        os.replace(tmp, path)
    except BaseException as exc:  # a full disk, a kill: no half-written temporary file is left behind
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not exc.filename and exc.errno:
            raise OSError(exc.errno, exc.strerror, str(path)) from None  # say which file could not be written
        raise


def write_csv(path: str | Path, fields, rows) -> None:
    """A CSV with header `fields` and `rows` (dicts, or sequences in field order), written atomically."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(fields)
    writer.writerows([r.get(k, "") for k in fields] if isinstance(r, dict) else r for r in rows)
    atomic_write(Path(path), buf.getvalue())


def json_safe(v):
    """NaN -> null, inf -> "inf", tuples/numpy -> plain JSON, recursively."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple) or type(v).__name__ == "ndarray":
        return [json_safe(x) for x in v]
    if hasattr(v, "item") and type(v).__module__ == "numpy":  # numpy scalars, without importing numpy
        v = v.item()
    if isinstance(v, float):
        return None if math.isnan(v) else ("inf" if v == math.inf else ("-inf" if v == -math.inf else v))
    return v


def write_json(path: str | Path, data) -> None:
    atomic_write(Path(path), json.dumps(json_safe(data), indent=2))


def cache_dir() -> Path:
    """Where exported graphs and compiled kernels are kept between runs ($VFA_CACHE, else ~/.cache/vfa)."""
    return Path(os.environ.get("VFA_CACHE") or Path.home() / ".cache" / "vfa")


def enable_compile_cache() -> None:
    """Keep inductor's FX-graph and kernel caches in cache_dir(), so they survive reboots and /tmp
    cleaning and a second run skips most of torch.compile's work."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))


def environment() -> dict:
    """Versions, platform, GPU and git commit, for environment.json (torch-free: it reads installed
    versions, and the GPU only from a torch that the run already imported)."""
    from importlib import metadata

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count()}
    for name in ("torch", "timm", "lightning"):
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = None
    torch = sys.modules.get("torch")
    env["cuda"] = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None
    env["argv"] = sys.argv
    try:
        src = Path(__file__).resolve().parent
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True,
                                           text=True, timeout=5).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=src, capture_output=True, text=True, timeout=5)
        env["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


def write_run_files(run_dir: Path, cfg) -> None:
    if is_secondary_rank():
        return
    atomic_write(run_dir / "config.yaml", config_mod.dump(cfg))
    atomic_write(run_dir / "environment.json", json.dumps(environment(), indent=2))
