"""Export a vfa checkpoint to ONNX, verified against the torch model before the file is kept.

The graph takes a (B, 3, H, W) float32 batch in [0, 1] (preprocessed exactly as `vfa.predict`
does; B is dynamic) and returns the fracture logit (B,). The checkpoint's config, threshold and
temperature travel as ONNX metadata (`vfa_config` JSON, `vfa_threshold`, `vfa_temperature`), so
a deployment can preprocess and decide as `vfa predict` does without the checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from vfa import config as config_mod

TOLERANCE = 1e-4  # max |delta P(fracture)| between onnxruntime and torch fp32 for an export to be kept


def cache_dir() -> Path:
    """Where exported graphs and compiled kernels are kept between runs ($VFA_CACHE, else ~/.cache/vfa)."""
    return Path(os.environ.get("VFA_CACHE") or Path.home() / ".cache" / "vfa")


def enable_compile_cache() -> None:
    """Keep inductor's FX-graph and kernel caches in cache_dir(), so they survive reboots and /tmp
    cleaning and a second run skips most of torch.compile's work."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))


def _session(path: str | Path, threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise config_mod.ConfigError("onnxruntime is not installed: pip install 'vfa[onnx]'") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export_onnx(model, out: str | Path, batch: int = 2, opset: int = 18, verify: bool = True,
                force: bool = False) -> dict:
    """Write `model` (a VFANet from `load_model`, or a checkpoint path) to `out` as ONNX.

    With `verify`, onnxruntime and torch (fp32) predict the same random batch; an export whose
    max |delta p| exceeds TOLERANCE is deleted and raises. Returns {"path", "max_abs_dp", ...}."""
    try:
        import onnx  # noqa: F401  (the dynamo exporter writes through onnx/onnxscript)
    except ImportError:
        raise config_mod.ConfigError("ONNX export needs the onnx extra: pip install 'vfa[onnx]'") from None
    from vfa.predict import load_model

    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    if not isinstance(model, torch.nn.Module):
        model = load_model(model)
    model = model.float().eval().cpu()
    h, w = model.config.data.size
    x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, opset notes) users cannot act on
        program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, input_names=["image"],
                                    output_names=["logit"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    external_data=False, verbose=False)
    program.model.metadata_props.update({  # onnx_ir model: metadata written with the file
        "vfa_config": json.dumps(config_mod.to_dict(model.config)),
        "vfa_threshold": str(float(getattr(model, "threshold", 0.5))),
        "vfa_temperature": str(float(getattr(model, "temperature", 1.0)))})
    program.save(str(tmp), external_data=False)
    result = {"path": str(out), "opset": opset, "input": [None, 3, h, w]}
    if verify:
        dp = verify_onnx(model, tmp, x)
        result["max_abs_dp"] = dp
        if not dp <= TOLERANCE:
            tmp.unlink()
            raise RuntimeError(f"ONNX export differs from torch: max |delta p| = {dp:.2e} > {TOLERANCE:g}")
    os.replace(tmp, out)
    return result


@torch.inference_mode()
def verify_onnx(model, path: str | Path, x: torch.Tensor) -> float:
    """max |sigmoid(onnx logit) - sigmoid(torch logit)| on batch x."""
    ref = torch.sigmoid(model(x).float()).numpy()
    got = 1 / (1 + np.exp(-_session(path).run(None, {"image": x.numpy()})[0]))
    return float(np.abs(got.reshape(-1) - ref.reshape(-1)).max())


def cached_onnx(model, key: str | None = None) -> Path:
    """An ONNX export of `model` kept under cache_dir(), keyed by its weights and input size,
    so `--backend onnxruntime` exports a checkpoint once, not on every run."""
    if key is None:
        digest = hashlib.sha256()
        for name, t in model.state_dict().items():
            digest.update(name.encode())
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        digest.update(repr(tuple(model.config.data.size)).encode())
        key = digest.hexdigest()[:20]
    path = cache_dir() / "onnx" / f"{key}.onnx"
    if not path.is_file():
        export_onnx(model, path, force=True)
    return path
