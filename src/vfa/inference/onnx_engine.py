"""The ONNX Runtime side of vfa's cached fp32 engine: sessions, the cache's keys, and a checkpoint run
straight from its cached export (`load_exact_engine`).

A checkpoint whose preset declares exactness (keras215: every `vfa import-keras` model) and whose
export is already in the cache (vfa.inference.export.cached_onnx: verified within 1e-5 of torch)
is scored by onnxruntime under `--backend auto` anyway (vfa.inference.backends.fp32_backend). Such a
job needs neither the torch network nor timm: `OnnxModel` carries the checkpoint's config and
decision fields and runs the export, so the process skips building the network and importing timm,
torchvision and torch._dynamo (issue 29: a third of a small job's start-up).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vfa import checkpoint
from vfa import config as config_mod
from vfa.runs import cache_dir

# presets whose point is to reproduce a computation exactly (keras215: what Keras 2.1.5 computed, in
# fp32; `vfa import-keras` gives it to every imported .h5): `auto` runs them in fp32
EXACT_PRESETS = ("keras215",)


def ort_session(path: str | Path, threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise config_mod.ConfigError("onnxruntime is not installed: pip install 'vfa[onnx]'") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_key(model=None, weights: dict | None = None, size=None) -> str:
    """The cache key of an export: the network's weights (a model's state dict, or a checkpoint's
    `weights`, which are the same tensors in the same order) and the input size."""
    digest = hashlib.sha256()
    items = model.state_dict().items() if model is not None else weights.items()
    for name, t in items:
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    digest.update(repr(tuple(size if size is not None else model.config.data.size)).encode())
    return digest.hexdigest()[:20]


def onnx_cache_path(model=None, key: str | None = None) -> Path:
    return cache_dir() / "onnx" / f"{key or onnx_key(model)}.onnx"


class OnnxModel(nn.Module):
    """A checkpoint's cached ONNX export in place of its network: logits from onnxruntime, and the
    attributes commands read of a loaded model (config, threshold, temperature, threshold_source)."""

    def __init__(self, path: Path):
        super().__init__()
        self.path, self.session = path, ort_session(path)
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # parameters(): the device (CPU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"image": x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(np.asarray(out)).reshape(-1)


def load_exact_engine(path, device) -> OnnxModel | None:
    """The checkpoint at `path` as an OnnxModel when that is what `--backend auto` would run anyway:
    an image-family checkpoint that declares exactness, on the CPU, with its export in the cache and
    onnxruntime installed. None otherwise (the caller builds the network)."""
    import importlib.util

    from vfa.models.loading import with_decision
    from vfa.registry import FAMILIES

    if torch.device(device).type != "cpu" or importlib.util.find_spec("onnxruntime") is None:
        return None
    ckpt = checkpoint.load(path, mmap=True)
    cfg = checkpoint.config_of(ckpt, path)
    family = FAMILIES.of(cfg)
    if cfg.preset not in EXACT_PRESETS or family.name != "image":
        return None
    onnx = onnx_cache_path(key=onnx_key(weights=checkpoint.weights_of(ckpt), size=cfg.data.size))
    if not onnx.is_file():
        return None
    return with_decision(OnnxModel(onnx), ckpt, cfg, family).eval()
