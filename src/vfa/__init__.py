"""vfa: vertebral fracture assessment on DXA lateral-spine images with CNNs.

Library API (the CLI wraps exactly these; all work the same from a notebook):
    cfg = vfa.resolve("cpu-demo", overrides={"data": {"train": "d/train", "val": "d/val"}})
    run = vfa.train(cfg, "runs/x")
    model = vfa.load_model(run / "checkpoints" / "best.ckpt")
    probs = vfa.predict(model, ["image.png"])
    metrics = vfa.evaluate(run / "checkpoints" / "best.ckpt", "d/test", "runs/x/test")

The package layout and its dependency rule are in docs/architecture.md.
"""
from vfa.config import Config, resolve

__version__ = "0.1.0"
__all__ = ["Config", "resolve", "train", "evaluate", "predict", "load_model", "build_model", "synthesize",
           "cross_validate"]

# name -> (module, attribute), imported on first use so that `import vfa` stays light until torch is needed
_LAZY = {"train": ("vfa.api", "train"), "evaluate": ("vfa.evaluation.evaluate", "evaluate"),
         "predict": ("vfa.inference.predict", "predict"), "load_model": ("vfa.models.loading", "load_model"),
         "build_model": ("vfa.models.network", "build_model"), "synthesize": ("vfa.phantom.synth", "synthesize"),
         "cross_validate": ("vfa.cv", "cross_validate")}


def __getattr__(name):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'vfa' has no attribute {name!r}")
