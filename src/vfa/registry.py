"""Things chosen by name (inference backends, CAM methods), as timm registers its models.

A registry declares its names with a title and a one-line description here, torch-free, so
config checks and CLI choices cost no imports; the implementing module registers each one with
`@REGISTRY.register(name)`, and `get(name)` imports that module on first use. CLI choices and help
come from `names()` / `describe()`, never from a hand-kept list.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from vfa.errors import ConfigError


@dataclass
class Entry:
    name: str
    title: str
    help: str
    impl: Any = None


class Registry:
    def __init__(self, kind: str, module: str):
        self.kind, self.module = kind, module
        self._entries: dict[str, Entry] = {}

    def declare(self, name: str, title: str, help: str) -> None:
        self._entries[name] = Entry(name, title, help)

    def register(self, name: str) -> Callable:
        """Decorator: `fn` implements the declared `name`."""
        def deco(fn):
            if name not in self._entries:
                raise KeyError(f"{self.kind} {name!r} is not declared in vfa.registry")
            self._entries[name].impl = fn
            return fn
        return deco

    def check(self, name: str, option: str | None = None) -> str:
        if name not in self._entries:
            raise ConfigError(f"unknown {option or self.kind} {name!r} (valid: {', '.join(self._entries)})")
        return name

    def get(self, name: str) -> Callable:
        entry = self._entries[self.check(name)]
        if entry.impl is None:
            importlib.import_module(self.module)
        if entry.impl is None:
            raise ConfigError(f"{self.kind} {name!r} has no implementation in {self.module}")
        return entry.impl

    def title(self, name: str) -> str:
        return self._entries[name].title if name in self._entries else str(name)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def describe(self) -> str:
        return "; ".join(f"{e.name}: {e.help}" for e in self._entries.values())

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)


BACKENDS = Registry("inference backend", "vfa.inference.backends")
BACKENDS.declare("auto", "auto", "per device and job size: bf16 where the CPU/GPU has it natively (compiled for "
                 "long jobs), else fp32 (onnxruntime for long CPU jobs); never int8")
BACKENDS.declare("torch", "torch fp32", "eager fp32, the reference every other backend is tested against")
BACKENDS.declare("torch-bf16", "torch bf16", "bf16 autocast (CPU or GPU) + channels_last; within 0.02 of fp32")
BACKENDS.declare("compile", "torch.compile", "inductor, weights frozen, bf16 autocast; kernels cached on disk")
BACKENDS.declare("onnxruntime", "onnxruntime fp32", "exported to ONNX once (cached, verified), run by onnxruntime")
BACKENDS.declare("openvino", "OpenVINO", "the ONNX export run by Intel's OpenVINO on the CPU (bf16 where "
                 "the CPU has it, else fp32); optional extra")
BACKENDS.declare("onnxruntime-int8", "onnxruntime int8",
                 "static int8 (QDQ), calibrated on up to 32 of the images, checked within 0.02 on up to 32 others")

CAM_METHODS = Registry("CAM method", "vfa.explain.cam")
CAM_METHODS.declare("gradcam", "Grad-CAM", "the notebook's: channel-mean gradients weight the feature map")
CAM_METHODS.declare("gradcam++", "Grad-CAM++", "Chattopadhay et al. 2018: higher-order gradient weights")
CAM_METHODS.declare("hirescam", "HiResCAM", "gradient x activation per cell, summed over channels")
CAM_METHODS.declare("layercam", "LayerCAM", "the same with positive gradients only; for earlier, finer layers")


# Values an option has when the user did not set it: a family refuses an option only when it is set.
UNSET = (None, False, 0, "", "auto", "raw", "model", (), [])

# The image-level table every family writes (predictions.csv of vfa predict / evaluate): what
# compare, cohort, synth-cohort, review, calibrate and --dicom-out read. A family adds its own extras.
IMAGE_COLUMNS = ("image_id", "file", "raw", "predicted")


@dataclass(frozen=True)
class Family:
    """A model family, as timm's registry entries carry what differs between models: each step is
    a "module:function" imported on first use (so this stays torch-free), and every command
    resolves the family once and either runs its step or refuses an option up front, naming it.

    Steps and their signatures, the same for every family:
      build(cfg) -> nn.Module                          the network of a config (weights not loaded)
      train(cfg, out, force, resume, log) -> Path      a run directory with checkpoints/best.ckpt
      evaluate(model, data, out, **options) -> dict    metrics.json's dict; predictions.csv etc. in out
      predict(model, inputs, out, sets, **options)     streamed, resumable OUT (IMAGE_COLUMNS + extras)
      heatmap(model, paths, out, **options) -> dict    what each image shows (CAMs, outlines)
      summary(cfg) -> str                              `vfa summary`'s text
    """
    name: str
    title: str
    help: str
    algorithm: str                   # the DICOM algorithm name, formatted with the config (model=, vertebra=)
    extra_columns: tuple[str, ...]   # image-level columns after IMAGE_COLUMNS
    evaluate_outputs: str            # what `vfa evaluate` writes, for its closing line
    steps: dict[str, str]
    refuses: dict[str, str] = field(default_factory=dict)   # option or command -> why not (docs)
    threshold_key: str = ""          # the config key of its decision threshold; "": 0.5 unless calibrated
    architecture: tuple = ()         # (config section, keys) that shape its weights: --init takes them

    def step(self, name: str) -> Callable:
        module, _, fn = self.steps[name].partition(":")
        return getattr(importlib.import_module(module), fn)

    def describe(self, cfg) -> str:
        return self.algorithm.format(model=cfg.model, vertebra=cfg.vertebra)

    def default_threshold(self, cfg) -> float:
        """The threshold a checkpoint of this family decides at when `vfa calibrate` stored none."""
        value = cfg
        for key in self.threshold_key.split(".") if self.threshold_key else ():
            value = getattr(value, key)
        return 0.5 if value is cfg else float(value)

    def refuse(self, command: str, **options) -> None:
        """ConfigError naming the first set option (keyword: the CLI flag, - as _) this family does
        not support, or the command itself when `command` is in `refuses`, before any work starts."""
        if command in self.refuses:
            raise ConfigError(f"vfa {command} with a {self.title}: {self.refuses[command]}")
        for option, value in options.items():
            if option in self.refuses and not any(value is u or value == u for u in UNSET):
                raise ConfigError(f"vfa {command} with a {self.title} does not take --{option.replace('_', '-')}: "
                                  f"{self.refuses[option]}")


class FamilyRegistry:
    def __init__(self, *families: Family):
        self._families = {f.name: f for f in families}

    def __getitem__(self, name: str) -> Family:
        if name not in self._families:
            raise ConfigError(f"model.family must be one of {', '.join(self._families)}, got {name!r}")
        return self._families[name]

    def of(self, cfg) -> Family:
        """The family of a config (a preset's, or a checkpoint's)."""
        return self[cfg.model.family]

    def names(self) -> tuple[str, ...]:
        return tuple(self._families)

    def __iter__(self):
        return iter(self._families.values())


_VERTEBRA_WHY = "docs/vertebrae.md"
FAMILIES = FamilyRegistry(
    Family("image", "image-level model", "one P(fracture) per image (the notebook's family)",
           algorithm="vfa vertebral fracture classifier ({model.backbone})",
           extra_columns=(),
           architecture=("model", ("backbone", "head", "head_batchnorm", "global_pool", "backbone_kwargs")),
           evaluate_outputs="metrics.json, predictions.csv, final_results.xlsx, figures and report.html",
           steps={"build": "vfa.models.network:build_network", "train": "vfa.training.train:train",
                  "evaluate": "vfa.evaluation.evaluate:evaluate_images", "predict": "vfa.inference.run:predict_images",
                  "heatmap": "vfa.explain.heatmaps:write_cams", "summary": "vfa.models.summary:image_summary"}),
    Family("vertebra", "per-vertebra model", "detect each body, place its six points, grade it by Genant's rules",
           algorithm="vfa per-vertebra reader ({vertebra.detector_backbone} detector, "
                     "{vertebra.landmark_backbone} landmarks)",
           extra_columns=("max_grade", "n_vertebrae"), threshold_key="vertebra.fracture_threshold",
           architecture=("vertebra", ("detector_backbone", "landmark_backbone", "width")),
           evaluate_outputs="metrics.json, predictions.csv, vertebrae.csv, vertebra_report.html and overlays",
           steps={"build": "vfa.models.vertebra:build_network", "train": "vfa.training.vertebra:train_vertebrae",
                  "evaluate": "vfa.evaluation.vertebra_eval:evaluate_vertebrae",
                  "predict": "vfa.inference.vertebra_predict:predict_vertebra_files",
                  "heatmap": "vfa.explain.outlines:write_outlines", "summary": "vfa.models.summary:vertebra_summary"},
           refuses={
               "ensemble": "combining per-vertebra readers needs bodies matched by level across members (mean P "
                           "per level, grades from the mean points); not implemented yet, use one model "
                           f"({_VERTEBRA_WHY})",
               "cv": "cross-validation ends in the fold ensemble on the test rows, and per-vertebra models do "
                     f"not ensemble yet ({_VERTEBRA_WHY})",
               "calibrate": "its image call comes from Genant's rules and the fracture head, not from one "
                            f"temperature-scaled logit; set vertebra.fracture_threshold instead ({_VERTEBRA_WHY})",
               "export": "the reading (peaks, levels, rotated crops, rules) runs in Python around two networks; "
                         f"ONNX of the networks alone would not read a spine ({_VERTEBRA_WHY})",
               "lr-find": f"the range test follows the image-level loss only ({_VERTEBRA_WHY})",
               "tta": "test-time augmentation would move the six points; the reading is made once",
               "threshold_from": "its call is the rules' or the fracture head's at vertebra.fracture_threshold; "
                                 "give --threshold N to set that",
               "score": "it has one image score, raw (no TTA)",
               "backend": "it runs in eager torch fp32 (the reading is not compiled or exported)",
               "boxes": "the pointing game scores CAMs; a per-vertebra evaluation matches bodies instead "
                        "(vertebrae.csv beside the data)",
               "method": "it draws body outlines, not CAMs",
               "target_layer": "it draws body outlines, not CAMs",
               "output_stride": "it draws body outlines, not CAMs",
               "set": "it reads in one process (no shards)",
               "dicom_out": "vfa heatmap draws outlines only; vfa predict --dicom-out writes the SR and SC",
               "panel": "its overlay is the outline drawing",
               "start_index": "it draws every image given",
           }),
)
