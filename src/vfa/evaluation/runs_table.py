"""`vfa runs list` and `vfa runs compare`: run directories side by side, from the files every run
writes (config.yaml, history.csv, test_metrics.json), so they work on any run, tracked or not."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from vfa import config as config_mod
from vfa.errors import ConfigError
from vfa.runs import marked

# resolved at run time or where the data lives: not what a user chose to change
_NOT_OVERRIDES = ("data.train", "data.val", "data.test", "trainer.precision", "data.augment_on", "preset")
METRICS = ("auc", "sn", "sp", "snspavg", "ppv", "npv", "acc")


def _config(run: Path) -> dict:
    try:
        return config_mod.yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, config_mod.yaml.YAMLError) as exc:
        raise ConfigError(f"{run}: config.yaml cannot be read ({exc})") from None


def overrides(cfg: dict) -> dict:
    """The `--set` keys where a run's config differs from its preset's defaults."""
    try:
        preset = config_mod.to_dict(config_mod.resolve(cfg.get("preset", "seed")))
    except ConfigError:
        preset = {}
    return {k: b for k, a, b in config_mod.differences(preset, cfg) if k not in _NOT_OVERRIDES and b is not None}


def run_record(run: Path) -> dict:
    """One run's row: preset, overrides, best validation AUC and its epoch, epochs, wall time, test AUC."""
    run = Path(run)
    cfg = _config(run)
    hist = pd.read_csv(run / "history.csv") if (run / "history.csv").is_file() else pd.DataFrame()
    best = hist.loc[hist["auc"].idxmax()] if "auc" in hist and hist["auc"].notna().any() else None
    start, end = run / "environment.json", run / "history.csv"
    wall = end.stat().st_mtime - start.stat().st_mtime if start.is_file() and end.is_file() else None
    test = {}
    if (run / "test_metrics.json").is_file():
        test = json.loads((run / "test_metrics.json").read_text())
    return {"run": str(run), "preset": cfg.get("preset"), "overrides": overrides(cfg),
            "epochs": len(hist), "of": (cfg.get("optim") or {}).get("epochs"),
            "best_val_auc": None if best is None else float(best["auc"]),
            "best_epoch": None if best is None else int(best["epoch"]), "wall_s": wall,
            "test_auc": test.get("auc")}


def find_runs(root: str | Path) -> list[Path]:
    """Training run folders at or below `root` (those vfa marked as train runs), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    found = [p.parent for p in root.rglob("config.yaml") if marked(p.parent) == "train"]
    return sorted(found)


def list_runs(root: str | Path) -> pd.DataFrame:
    rows = [run_record(r) for r in find_runs(root)]
    frame = pd.DataFrame(rows, columns=["run", "preset", "overrides", "epochs", "of", "best_val_auc", "best_epoch",
                                        "wall_s", "test_auc"])
    root = Path(root)
    frame["run"] = [Path(r).relative_to(root).as_posix() or "." for r in frame["run"]]
    frame["overrides"] = [" ".join(f"{k}={v}" for k, v in o.items()) for o in frame["overrides"]]
    return frame


def compare_runs(a: str | Path, b: str | Path) -> dict:
    """Config differences and metric differences (final epoch, best epoch, test) of two runs."""
    a, b = Path(a), Path(b)
    for run in (a, b):
        if not (run / "config.yaml").is_file():
            raise FileNotFoundError(f"{run} is not a vfa run directory (no config.yaml)")
    config = [{"key": k, "A": va, "B": vb} for k, va, vb in config_mod.differences(_config(a), _config(b))
              if k not in ("data.train", "data.val", "data.test")]
    rows = []
    for name, pick in (("best val", _best), ("last val", _last), ("test", _test)):
        ma, mb = pick(a), pick(b)
        for key in METRICS:
            va, vb = ma.get(key), mb.get(key)
            if va is None and vb is None:
                continue
            rows.append({"metric": f"{name} {key}", "A": va, "B": vb,
                         "B - A": None if va is None or vb is None else vb - va})
    return {"A": str(a), "B": str(b), "config": config, "metrics": rows}


def _history(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "history.csv") if (run / "history.csv").is_file() else pd.DataFrame()


def _best(run: Path) -> dict:
    h = _history(run)
    return {} if h.empty or h["auc"].isna().all() else h.loc[h["auc"].idxmax()].to_dict()


def _last(run: Path) -> dict:
    h = _history(run)
    return {} if h.empty else h.iloc[-1].to_dict()


def _test(run: Path) -> dict:
    f = run / "test_metrics.json"
    return json.loads(f.read_text()) if f.is_file() else {}
