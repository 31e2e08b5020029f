"""Run directories and output files: never overwritten without --force, written atomically,
self-describing; plus the on-disk cache for exported graphs and compiled kernels."""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from vfa import config as config_mod


def is_secondary_rank() -> bool:
    """True in DDP worker processes (re-launched by Lightning, torchrun or SLURM) that must not touch files."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def refuse_existing(path: str | Path, force: bool) -> Path:
    """The one "exists, pass --force" guard for single output files: raises FileExistsError
    unless `force`; the caller then replaces the file atomically (`atomic_write`)."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    return path


def prepare_run_dir(path: Path, force: bool) -> None:
    if is_secondary_rank():
        return
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if not force:
            raise FileExistsError(f"{path} already exists and is not empty; pass --force to overwrite it")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.mkdir(parents=True, exist_ok=True)


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs are meant to be shared like any file
    os.replace(tmp, path)


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
    import lightning
    import timm
    import torch

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "torch": torch.__version__, "timm": timm.__version__, "lightning": lightning.__version__,
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "argv": sys.argv}
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
