"""One resolved configuration drives a run: defaults <- preset <- config file <- --set overrides.

The resolved config is saved as `config.yaml` in every run directory and inside every checkpoint,
so `predict`/`evaluate` preprocess exactly as training did.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vfa import presets, vendors
from vfa.errors import ConfigError  # noqa: F401  (vfa.config.ConfigError: the name every caller uses)
from vfa.registry import CAM_METHODS, FAMILIES


# --- augmentation presets (applied by vfa.data.augment; docs/notebook-differences.md) ---------

@dataclass
class AugmentConfig:
    rotation: float = 30.0          # degrees, theta ~ U(-r, r)
    shift_rows: float = 0.2         # fraction of H, tx ~ U(-f, f) * H  (Keras height_shift_range)
    shift_cols: float = 0.2         # fraction of W, ty ~ U(-f, f) * W  (Keras width_shift_range)
    shear: float = 0.2              # range, in shear_units
    shear_units: str = "radians"    # "radians" (notebook prose) | "degrees" (what Keras 2.1.5 ran)
    zoom: float = 0.1               # zx, zy ~ U(1 - z, 1 + z)
    zoom_independent: bool = False  # False: one draw for both axes (keeps aspect); True: Keras
    channel_shift: float = 0.1
    channel_shift_scale: str = "unit"  # "unit": on [0,1], clip [0,1]; "uint8": /255, clip image min..max
    fill: float = 0.0
    resize: str = "bilinear"        # "bilinear" | "nearest" (PIL nearest, as flow_from_directory)
    # not in the notebook (Keras 2.1.5 had no brightness_range): multiply by U(1-b, 1+b) so that a
    # net cannot lean on absolute bone density, which varies between scanners and patients
    brightness: float = 0.0
    # the device range (`vendor` preset; vfa.data.augment.vendor_look): blur sd ~ U(0, b) x height; x ** exp(U(-g, g));
    # U(0, c) of the histogram clipped at each end; noise sd ~ U(0, n) of full scale at noise_rows rows (0: as is)
    blur: float = 0.0
    gamma: float = 0.0
    contrast: float = 0.0
    noise: float = 0.0
    noise_rows: int = 0

    def __post_init__(self):
        for name, ok in (("shear_units", ("radians", "degrees")),
                         ("channel_shift_scale", ("unit", "uint8")),
                         ("resize", ("bilinear", "nearest"))):
            if getattr(self, name) not in ok:
                raise ValueError(f"{name} must be one of {ok}, got {getattr(self, name)!r}")


_KERAS = dict(shear_units="degrees", zoom_independent=True, channel_shift_scale="uint8", resize="nearest")
_TTA = dict(rotation=20.0, shift_rows=0.0, shift_cols=0.0, shear=0.0, zoom=0.1, channel_shift=0.1)
AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "seed": AugmentConfig(),
    "keras215": AugmentConfig(**_KERAS),
    "tta": AugmentConfig(**_TTA),
    "tta-keras215": AugmentConfig(**_TTA, **_KERAS),
    "none": AugmentConfig(rotation=0.0, shift_rows=0.0, shift_cols=0.0, shear=0.0, zoom=0.0,
                          channel_shift=0.0),
    # cpu-demo's geometry + the range between the clinical phantom's vendor looks (derived from vfa.vendors)
    "vendor": AugmentConfig(rotation=5.0, shift_rows=0.05, shift_cols=0.05, shear=0.0, zoom=0.05, channel_shift=0.0,
                            **vendors.augment_ranges()),
}


def get_augment_config(name: str, **overrides) -> AugmentConfig:
    """A fresh copy of preset ``name`` with ``overrides`` applied."""
    if name not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; valid: {sorted(AUGMENT_PRESETS)}")
    fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown augmentation option(s) {bad}; valid: {sorted(fields)}")
    return dataclasses.replace(AUGMENT_PRESETS[name], **overrides)


# --- the run configuration ---------------------------------------------------------------------


@dataclass
class DataConfig:
    train: str | None = None  # a class folder, a manifest CSV, or MANIFEST.csv:SPLIT
    val: str | None = None    # (None with a manifest train: its 'val' split)
    test: str | None = None   # optional held-out set (train --test): checked for leakage before training
    classes: tuple[str, ...] = ("norm", "frac")
    size: tuple[int, int] = (600, 360)  # (H, W) as the notebook: width = 0.6 * height
    batch_size: int = 12
    num_workers: int = 2
    on_bad_file: str = "error"  # error | skip
    normalize: str = "seed"     # seed | minmax | percentile[:LO,HI] | equalize[:BINS] (vfa.io.normalize)
    frame: int | None = None    # frame of multi-frame DICOM/TIFF files to read (None: refuse them)
    min_side: int = 16          # refuse images whose shorter side is below this (px): no spine fits
    # none: each image once an epoch; balanced: as many drawn with replacement, either class equally likely
    # (the seed's phase_1_all_balanced_up; torch's WeightedRandomSampler), instead of optim.class_weights
    sampler: str = "none"
    # where training augmentation runs: "workers" (per image, in DataLoader workers), "device" (whole
    # batches on the training device, same parameters: one worker feeds a GPU), "auto" (device on a GPU)
    augment_on: str = "auto"
    # cross-validation (vfa cv): train on the other folds of the `train` manifest, validate on this
    # one; its `test` rows stay out. A manifest without a fold column gets `folds` folds, patient-level
    # and stratified (vfa.data.split.assign_folds, seeded with fold_seed)
    fold: int | None = None
    folds: int = 5
    fold_seed: int = 0


@dataclass
class ModelConfig:
    # image: one P(fracture) per image (the notebook's family); vertebra: detect and read each body
    # (vfa.models.vertebra, the `vertebra` section below, docs/vertebrae.md)
    family: str = "image"
    backbone: str = "inception_resnet_v2"
    pretrained: bool = False  # the notebook trained from scratch (weights=None)
    head: tuple[int, ...] = (1024,)
    global_pool: str = "avg"  # the notebook's GlobalAveragePooling2D; timm also offers max, avgmax
    backbone_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model
    head_batchnorm: bool = False  # the notebook's undocumented "with BN" variant
    head_dropout: float = 0.0
    init: str = "timm"  # timm | keras (glorot-uniform kernels, zero biases)
    # NHWC: what oneDNN and cuDNN convolutions prefer (measured gains: BENCHMARKS.md)
    channels_last: bool = True
    init_from: str | None = None  # a vfa checkpoint (e.g. from `vfa import-keras`) whose weights start training
    # Grad-CAM evaluates the backbone at this output stride (same weights, dilated instead of strided)
    # for maps finer than the backbone's own last one; None: the backbone's own (timm's output_stride)
    cam_output_stride: int | None = None
    # the heatmap's method and target layer (vfa heatmap / evaluate defaults): the notebook's Grad-CAM
    # on the last feature map, or e.g. LayerCAM on an earlier, finer layer (cpu-demo)
    cam_method: str = "gradcam"
    cam_layer: str | None = None
    # torch.compile the network for training (inductor; kernels cached under ~/.cache/vfa/inductor).
    # Off by default: on CPU it saves only the elementwise share of a step (BENCHMARKS.md).
    compile: bool = False


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    epochs: int = 10
    class_weights: bool = True  # positive weight n_norm / n_frac, as the notebook
    sgdr: bool = True
    sgdr_steps: int = 10  # cos_sgdr_sched(steps, cycles, exp), one value per epoch
    sgdr_cycles: int = 1
    sgdr_exp: int = 2
    sgdr_per_step: bool = False  # cosine restarts per optimizer step instead of per epoch


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    # "auto": bf16-mixed where the training device has native bf16 (a GPU that supports it; a CPU with
    # avx512_bf16 or AMX; BENCHMARKS.md), else 32-true; saved in config.yaml. Or any Lightning precision
    precision: str = "auto"
    deterministic: bool = True
    log_every_n_steps: int = 10
    limit_train_batches: Any = None  # for smoke tests: int batches or float fraction
    progress: bool = True
    # experiment tracking through Lightning's loggers: csv | tensorboard | mlflow | none, or a list;
    # each writes under RUN/logs/ (mlflow: to tracking_uri, default a local mlruns/ beside the run)
    logger: Any = "tensorboard"
    tracking_uri: str | None = None
    experiment: str = "vfa"


@dataclass
class VertebraConfig:
    table: str | None = None   # per-vertebra truth CSV; None: vertebrae.csv beside the training data
    detector_backbone: str = "resnet10t"   # timm names
    landmark_backbone: str = "resnet18"
    width: int = 64
    pretrained: bool = False
    detector_size: tuple[int, int] = (192, 112)   # (H, W) the detector sees; data.size is the working size
    crop_size: int = 64        # px of each body's crop
    crop_scale: float = 1.8    # crop side / the spine's spacing between levels
    bodies_per_image: int = 8  # training crops per image: every fractured body, then normal ones
    jitter: float = 0.08       # training crop centre / scale noise, as a share of the spacing
    heat_threshold: float = 0.3
    fracture_threshold: float = 0.5   # the fracture head's P at which a body is called fractured
    # who grades: the rules on the predicted points (and the fracture head's calls) or the learned grade;
    # P(fracture) at even odds as trained, or at the training share of fractures (docs/vertebrae.md)
    grading: str = "rules"
    fracture_prior: str = "balanced"
    # the side the spines face: left (the phantom's), right (read mirrored) or auto per image (docs/vertebrae.md)
    orientation: str = "auto"


@dataclass
class Config:
    preset: str = "seed"
    seed: int = 42
    augment: str = "seed"  # name of an augmentation preset (AUGMENT_PRESETS)
    augment_overrides: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    vertebra: VertebraConfig = field(default_factory=VertebraConfig)
    # phantom defaults used by `vfa synth --preset NAME` (the demo generates what it trains on)
    synth: dict = field(default_factory=dict)


# Presets (vfa.presets) are overrides on top of these defaults (the notebook's documented intent).
PRESETS = presets.PRESETS



def merge_into(target: Any, updates: dict, where: str = "") -> Any:
    """Recursively apply a dict of overrides to a dataclass, rejecting unknown keys."""
    for key, value in updates.items():
        if not hasattr(target, key):
            valid = ", ".join(f.name for f in dataclasses.fields(target))
            raise ConfigError(f"unknown config key '{where}{key}' (valid: {valid})")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            merge_into(current, value, f"{where}{key}.")
        else:
            if isinstance(current, tuple) and isinstance(value, list | tuple):
                value = tuple(value)
            elif isinstance(current, float) and isinstance(value, str | int) and not isinstance(value, bool):
                try:  # YAML 1.1 reads "1e-4" as a string
                    value = float(value)
                except ValueError:
                    raise ConfigError(f"{where}{key} must be a number, got '{value}'") from None
            setattr(target, key, value)
    return target


def merged_dict(base: dict, extra: dict) -> dict:
    """Deep-merge two override dicts (extra wins)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged_dict(out[key], value)
        else:
            out[key] = value
    return out


def parse_set(items: list[str] | None) -> dict:
    """['optim.lr=3e-4', 'model.head=[512]'] -> nested dict; values parsed as YAML."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def resolve(preset: str = "seed", file: str | Path | None = None, overrides: dict | None = None) -> Config:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}' (valid: {', '.join(PRESETS)})")
    cfg = Config(preset=preset)
    merge_into(cfg, copy.deepcopy(PRESETS[preset]))
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        loaded.pop("preset", None)
        merge_into(cfg, loaded)
    merge_into(cfg, overrides or {})
    check(cfg)
    return cfg


AUGMENT_ON, SAMPLERS = ("auto", "workers", "device"), ("none", "balanced")


def check(cfg: Config) -> None:
    """Catch bad values now, not inside a DataLoader worker minutes into a run."""
    if not isinstance(cfg.augment_overrides, dict):
        raise ConfigError(f"augment_overrides must be a mapping, got {cfg.augment_overrides!r} "
                          "(YAML flow maps need a space after each colon: {rotation: 5})")
    try:
        get_augment_config(cfg.augment, **cfg.augment_overrides)
    except ValueError as exc:
        raise ConfigError(f"augment: {exc}") from None
    if len(cfg.data.size) != 2 or min(cfg.data.size) < 32:
        raise ConfigError(f"data.size must be [H, W] with both >= 32, got {list(cfg.data.size)}")
    for name in ("batch_size", "num_workers"):
        if not isinstance(getattr(cfg.data, name), int) or getattr(cfg.data, name) < (name == "batch_size"):
            raise ConfigError(f"data.{name} must be a non-negative integer, got {getattr(cfg.data, name)!r}")
    CAM_METHODS.check(cfg.model.cam_method, "model.cam_method")
    if cfg.data.augment_on not in AUGMENT_ON:
        raise ConfigError(f"data.augment_on must be one of {AUGMENT_ON}, got {cfg.data.augment_on!r}")
    if not isinstance(cfg.optim.epochs, int) or cfg.optim.epochs < 1 or not cfg.optim.lr > 0:
        raise ConfigError(f"optim.epochs must be an integer >= 1 and optim.lr > 0, got {cfg.optim.epochs!r} and "
                          f"{cfg.optim.lr!r}")
    _check_trainer(cfg.trainer)
    d = cfg.data
    if not isinstance(d.folds, int) or d.folds < 2:
        raise ConfigError(f"data.folds must be an integer >= 2, got {d.folds!r}")
    if d.fold is not None and (not isinstance(d.fold, int) or not 0 <= d.fold < d.folds):
        raise ConfigError(f"data.fold must be an integer from 0 to data.folds - 1 = {d.folds - 1}, got {d.fold!r}")
    if d.sampler not in SAMPLERS:
        raise ConfigError(f"data.sampler must be one of {SAMPLERS}, got {d.sampler!r}")
    if d.sampler == "balanced" and cfg.optim.class_weights:
        raise ConfigError("data.sampler=balanced already evens the classes; with optim.class_weights too the "
                          "fractures would count twice: set optim.class_weights=false (or data.sampler=none)")
    if not isinstance(cfg.data.min_side, int) or cfg.data.min_side < 1:
        raise ConfigError(f"data.min_side must be a positive integer, got {cfg.data.min_side!r}")
    FAMILIES.of(cfg)  # an unknown model.family: ConfigError naming the known ones
    v = cfg.vertebra
    if min(v.crop_size, v.bodies_per_image, v.width, *v.detector_size) < 1 or not 0 < v.heat_threshold < 1 \
            or not 0 < v.fracture_threshold <= 1:
        raise ConfigError("vertebra: crop_size, bodies_per_image, width and detector_size must be positive and "
                          f"heat_threshold and fracture_threshold in (0, 1); got {v}")
    for key, allowed in (("orientation", ORIENTATIONS), ("grading", GRADINGS), ("fracture_prior", FRACTURE_PRIORS)):
        if getattr(v, key) not in allowed:
            raise ConfigError(f"vertebra.{key} must be one of {allowed} (docs/vertebrae.md), got {getattr(v, key)!r}")


ORIENTATIONS = ("auto", "left", "right")   # vertebra.orientation: vfa.inference.orientation
GRADINGS = ("rules", "head")                # vertebra.grading: vfa.inference.vertebra.spine_rows
FRACTURE_PRIORS = ("balanced", "training")  # vertebra.fracture_prior: vfa.inference.vertebra.place_points
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "64")


def _check_trainer(t: TrainerConfig) -> None:
    """Lightning's own errors for these come as tracebacks from deep inside the Trainer."""
    if str(t.accelerator).lower() not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator must be one of {ACCELERATORS}, got {t.accelerator!r}")
    if str(t.precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {PRECISIONS}, got {t.precision!r}")
    d = t.devices
    ok = (d == "auto" or (isinstance(d, int) and not isinstance(d, bool) and d >= -1 and d != 0)
          or (isinstance(d, list | tuple) and d and all(isinstance(i, int) and i >= 0 for i in d))
          or (isinstance(d, str) and d.replace(",", "").replace(" ", "").isdigit()))
    if not ok:
        raise ConfigError(f"trainer.devices must be auto, a count (-1: all), a list of indices or '0,1', "
                          f"got {d!r}")
    if not isinstance(t.num_nodes, int) or t.num_nodes < 1:
        raise ConfigError(f"trainer.num_nodes must be an integer >= 1, got {t.num_nodes!r}")
    bad = [name for name in loggers(t) if name not in LOGGERS]
    if bad:
        raise ConfigError(f"trainer.logger must be one or a list of {', '.join(LOGGERS)}, got {t.logger!r}")


LOGGERS = ("csv", "tensorboard", "mlflow", "none")


def loggers(t: TrainerConfig) -> list[str]:
    """trainer.logger as a list of names ('none', None, False and [] give [])."""
    value = t.logger
    if value in (None, False, "", "none"):
        return []
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, list | tuple) else [value]
    return [str(n).strip().lower() for n in names if str(n).strip().lower() != "none"]


def to_dict(cfg: Config) -> dict:
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value
    return plain(asdict(cfg))


def from_dict(data: dict) -> Config:
    data = copy.deepcopy(data)
    cfg = Config(preset=data.pop("preset", "seed"))
    return merge_into(cfg, data)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(data: dict, prefix: str = "") -> dict:
    """{'optim': {'lr': 1e-3}} -> {'optim.lr': 1e-3}: the keys `--set` takes."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(a: dict, b: dict) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for every `--set` key where two config dicts differ (None: absent)."""
    fa, fb = flatten(a), flatten(b)
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
