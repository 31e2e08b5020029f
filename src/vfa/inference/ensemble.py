"""Ensembles: several checkpoints scored as one model, as the seed study's CNN was.

`--model` takes one checkpoint, several (`--model a.ckpt --model b.ckpt`), or an ensemble file
written by `vfa ensemble`:

    vfa_ensemble: 1
    combine: mean            # or max
    threshold: 0.5           # `vfa calibrate` on the ensemble's validation scores sets it
    threshold_source: ...
    members:
      - {name: fold0, path: fold0/checkpoints/best.ckpt, sha256: ...}   # paths relative to the file

A member whose checksum no longer matches is refused. Each member keeps its own preprocessing
(input size, normalization) and temperature: the images are decoded once and resized per member,
so members of different input sizes mix. The combined score of each kind (raw, tta_mean,
tta_max) is the rule applied to the members' scores of that kind; with TTA the mean of member
means is the mean over members x passes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from vfa.config import ConfigError

COMBINE = {"mean": lambda s: s.mean(axis=1), "max": lambda s: s.max(axis=1)}
ENSEMBLE_SUFFIXES = (".yaml", ".yml")


@dataclass
class Ensemble:
    """Loaded members (VFANet, eval mode) with their names and the combination rule."""
    members: list
    names: list[str]
    combine: str = "mean"
    stored_threshold: float | None = None   # None: a single member's own stored threshold
    stored_source: str | None = None
    paths: list[str] = field(default_factory=list)

    # the attributes commands read of a single model (vfa.models.loading.load_model)
    threshold = property(lambda self: self.decision_threshold())
    threshold_source = property(lambda self: self.source())
    temperature = property(lambda self: self.members[0].temperature if len(self) == 1
                           else [float(m.temperature) for m in self.members])

    def __len__(self) -> int:
        return len(self.members)

    @property
    def config(self):
        return self.members[0].config

    @property
    def single(self):
        """The one member of a one-model 'ensemble', else None."""
        return self.members[0] if len(self.members) == 1 else None

    def decision_threshold(self) -> float:
        if self.stored_threshold is not None:
            return float(self.stored_threshold)
        return float(self.members[0].threshold) if len(self) == 1 else 0.5

    def source(self) -> str:
        if self.stored_source:
            return self.stored_source
        return self.members[0].threshold_source if len(self) == 1 else "default 0.5 (calibrate the ensemble)"

    def combined(self, scores: np.ndarray) -> np.ndarray:
        """(N, M) member scores -> (N,) by the combination rule."""
        return COMBINE[self.combine](np.asarray(scores, dtype=np.float64).reshape(len(scores), -1))


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_ensemble_file(path) -> bool:
    return isinstance(path, str | Path) and Path(path).suffix.lower() in ENSEMBLE_SUFFIXES


def model_paths(spec) -> list:
    """The --model argument(s) as a list (a single str/Path, or a list of them), a run folder
    replaced by its checkpoints/best.ckpt (vfa.checkpoint.resolve), so that member names,
    checksums and job records see the file that is loaded."""
    from vfa.checkpoint import resolve  # torch-free

    items = [spec] if isinstance(spec, str | Path) or hasattr(spec, "parameters") else list(spec)
    if not items:
        raise ConfigError("--model: at least one checkpoint is needed")
    if len(items) > 1 and any(is_ensemble_file(p) for p in items):
        raise ConfigError("--model: give one ensemble file, or several checkpoints, not both")
    return [str(resolve(p)) if isinstance(p, str | Path) and Path(p).is_dir() else p for p in items]


def resolve_family(spec, command: str):
    """The family (vfa.registry.FAMILIES) of --model's value(s): loaded models, checkpoints or an
    ensemble file. Members of two families, or several members of a family that does not
    ensemble, are refused naming the reason, before any model is loaded."""
    from vfa.models.loading import checkpoint_family
    from vfa.registry import FAMILIES

    items = model_paths(spec)
    if hasattr(items[0], "parameters") or hasattr(items[0], "members"):
        return FAMILIES.of(items[0].config)
    paths = [m["path"] for m in read_ensemble(items[0])["members"]] if is_ensemble_file(items[0]) else items
    families = {f.name: f for f in (checkpoint_family(p) for p in dict.fromkeys(map(str, paths)))}
    if len(families) > 1:
        raise ConfigError(f"--model: the members are of different families ({', '.join(families)}); "
                          f"an ensemble's members read images the same way")
    family = next(iter(families.values()))
    if len(paths) > 1 and "ensemble" in family.refuses:
        raise ConfigError(f"vfa {command}: {len(paths)} {family.title}s given: {family.refuses['ensemble']}")
    return family


def read_ensemble(path: str | Path) -> dict:
    """An ensemble file, validated: members' paths resolved against its folder, checksums checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ensemble file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable ensemble file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("vfa_ensemble") != 1 or not data.get("members"):
        raise ConfigError(f"{path}: not a vfa ensemble file (needs vfa_ensemble: 1 and members)")
    if data.get("combine", "mean") not in COMBINE:
        raise ConfigError(f"{path}: combine must be one of {', '.join(COMBINE)}, got {data.get('combine')!r}")
    members = []
    for i, m in enumerate(data["members"], 1):
        if not isinstance(m, dict) or "path" not in m:
            raise ConfigError(f"{path}: member {i} has no path")
        file = (path.parent / m["path"]) if not Path(m["path"]).is_absolute() else Path(m["path"])
        if not file.is_file():
            raise FileNotFoundError(f"{path}: member {i} not found: {file}")
        if m.get("sha256") and sha256(file) != m["sha256"]:
            raise ConfigError(f"{path}: member {i} ({file}) has changed since the ensemble was written "
                              f"(sha256 differs); rebuild it with vfa ensemble")
        members.append({"name": str(m.get("name") or file.stem), "path": str(file)})
    thr = data.get("threshold")
    if thr is not None and not (isinstance(thr, int | float) and 0 <= thr <= 1):
        raise ConfigError(f"{path}: threshold must be a number in [0, 1], got {thr!r}")
    return {"combine": data.get("combine", "mean"), "threshold": thr, "members": members,
            "threshold_source": data.get("threshold_source")}


def member_names(paths: list) -> list[str]:
    """Column-safe, unique names: the checkpoint's stem, or its run folder's name for best/last.ckpt."""
    names = []
    for p in paths:
        p = Path(p)
        name = p.parent.parent.name if p.stem in ("best", "last") and p.parent.name == "checkpoints" else p.stem
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "model"
        base, k = name, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def load_ensemble(spec, device="cpu", combine: str | None = None, backend: str | None = None) -> Ensemble:
    """--model's value(s) -> an Ensemble of loaded members (one member for a single checkpoint).
    `backend` "auto": a member that auto would run on its cached fp32 export is loaded as that
    export, without building its network (vfa.inference.onnx_engine.load_exact_engine)."""
    from vfa.inference.onnx_engine import load_exact_engine
    from vfa.models.loading import load_model, resolve_device

    items = model_paths(spec)
    if hasattr(items[0], "parameters"):  # already-loaded models
        return Ensemble(items, member_names([getattr(m, "name", f"m{i}") for i, m in enumerate(items)]),
                        combine or "mean")
    device = resolve_device(device)
    if is_ensemble_file(items[0]):
        info = read_ensemble(items[0])
        paths = [m["path"] for m in info["members"]]
        names = member_names([m["name"] for m in info["members"]])
        rule, thr, src = combine or info["combine"], info["threshold"], info["threshold_source"]
    else:
        paths, names, rule, thr, src = [str(p) for p in items], member_names(items), combine or "mean", None, None
    if rule not in COMBINE:
        raise ConfigError(f"--combine must be one of {', '.join(COMBINE)}, got {rule!r}")
    members = [(backend == "auto" and load_exact_engine(p, device)) or load_model(p, device) for p in paths]
    return Ensemble(members, names, rule, thr, src, paths)


def write_ensemble(models, out: str | Path, combine: str = "mean", threshold: float | None = None,
                   threshold_source: str | None = None, force: bool = False) -> Path:
    """`vfa ensemble`: the members by path (relative to `out`'s folder where possible) and sha256.
    Every member is loaded once, so a broken checkpoint is refused now rather than mid-run."""
    import os

    from vfa.checkpoint import load
    from vfa.runs import atomic_write, refuse_existing

    paths = model_paths(models)
    if any(is_ensemble_file(p) for p in paths):
        raise ConfigError("vfa ensemble: --model takes checkpoints, not an ensemble file")
    resolve_family(paths, "ensemble").refuse("ensemble")
    if combine not in COMBINE:
        raise ConfigError(f"--combine must be one of {', '.join(COMBINE)}, got {combine!r}")
    out = refuse_existing(out, force, inputs=paths)
    members = []
    for name, p in zip(member_names(paths), paths):
        load(p)  # weights_only; raises CheckpointError naming the file
        rel = os.path.relpath(Path(p).resolve(), out.resolve().parent)
        members.append({"name": name, "path": Path(rel).as_posix(), "sha256": sha256(p)})
    data = {"vfa_ensemble": 1, "combine": combine, "threshold": threshold,
            "threshold_source": threshold_source, "members": members}
    atomic_write(out, yaml.safe_dump(data, sort_keys=False))
    return out
