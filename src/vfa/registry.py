"""Things chosen by name (inference backends, CAM methods), as timm registers its models.

A registry declares its names with a title and a one-line description here, torch-free, so
config checks and CLI choices cost no imports; the implementing module registers each one with
`@REGISTRY.register(name)`, and `get(name)` imports that module on first use. CLI choices and help
come from `names()` / `describe()`, never from a hand-kept list.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
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
