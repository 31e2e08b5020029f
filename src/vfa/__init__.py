"""vfa: vertebral fracture assessment on DXA lateral-spine images with CNNs.

Library API (the CLI wraps exactly these; all work the same from a notebook):
    cfg = vfa.resolve("cpu-demo", overrides={"data": {"train": "d/train", "val": "d/val"}})
    run = vfa.train(cfg, "runs/x")
    model = vfa.load_model(run / "checkpoints" / "best.ckpt")
    probs = vfa.predict(model, ["image.png"])
"""
from vfa.config import Config, resolve

__version__ = "0.1.0"
__all__ = ["Config", "resolve", "train", "evaluate", "predict", "load_model", "build_model", "synthesize"]


def __getattr__(name):  # lazy, so `import vfa` stays light until torch is needed
    import importlib

    if name in ("train", "evaluate", "predict"):  # callable modules: vfa.train(cfg, out) works
        return importlib.import_module(f"vfa.{name}")
    homes = {"load_model": "vfa.predict", "build_model": "vfa.model", "synthesize": "vfa.synth"}
    if name in homes:
        return getattr(importlib.import_module(homes[name]), name)
    raise AttributeError(f"module 'vfa' has no attribute {name!r}")
