"""vfa: vertebral fracture assessment on DXA lateral-spine images with CNNs.

Library API (the CLI wraps exactly these):
    cfg = vfa.config.resolve("cpu-demo", overrides={"data": {"train": ..., "val": ...}})
    run = vfa.train(cfg, "runs/x")
    model = vfa.load_model(run / "checkpoints" / "best.ckpt")
    probs = vfa.predict(model, ["image.png"])
"""
from vfa.config import Config, resolve

__version__ = "0.1.0"
__all__ = ["Config", "resolve", "train", "load_model", "predict", "evaluate", "build_model", "synthesize"]


def __getattr__(name):  # lazy: `import vfa` stays fast and torch-free until needed
    if name == "train":
        from vfa.train import train
        return train
    if name in ("load_model", "predict"):
        from vfa import predict as _p
        return getattr(_p, name)
    if name == "evaluate":
        from vfa.evaluate import evaluate
        return evaluate
    if name == "build_model":
        from vfa.model import build_model
        return build_model
    if name == "synthesize":
        from vfa.synth import synthesize
        return synthesize
    raise AttributeError(f"module 'vfa' has no attribute {name!r}")
