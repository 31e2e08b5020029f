"""Run directories: never overwritten without --force, written atomically, self-describing."""
from __future__ import annotations

import json
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
