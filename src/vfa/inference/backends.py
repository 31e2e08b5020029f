"""Inference backends: the same model, run four ways, behind the one `model(x) -> logit` interface.

  torch        fp32 eager: the reference every other backend is tested against
  torch-bf16   bf16 autocast (CPU or GPU) + channels_last; |delta p| <= 0.02 of fp32 (tests)
  compile      torch.compile (inductor, weights frozen into the graph) + bf16 autocast + channels_last;
               compiled kernels are cached on disk (cache_dir()/inductor), so a second run skips
               most of the compile; partial batches are padded to the first batch size so one
               graph serves a whole run
  onnxruntime  the checkpoint exported to ONNX once (cached, verified against torch) and run by
               onnxruntime's CPU provider in fp32
  onnxruntime-int8  that export statically quantized to int8 (QDQ, per-channel weights; VNNI/AMX
               kernels), its activation ranges calibrated on the first images of the job
               (`calibration`); refused if it moves P(fracture) by more than 0.02 on held-out ones.
               Opt-in: quantization is a change to the model a user should choose knowingly
  openvino     the same ONNX export compiled by Intel's OpenVINO runtime for the CPU (bf16 inference
               where the CPU has AMX/AVX512-BF16, else fp32); optional (pip install 'vfa[openvino]')
  auto         per device and job size (`resolve_backend`): bf16 where the hardware has it, compiled
               once the job repays the compile, else fp32 (onnxruntime for long CPU jobs)

`with_backend(model, name)` returns a module that keeps `config`, `threshold`, `temperature` and
`parameters()` of the wrapped VFANet, so `predict_loader` and `tta_predict` take it unchanged.
Grad-CAM always runs on the eager fp32 model (it needs gradients).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vfa.config import ConfigError
from vfa.inference.export import cached_int8, cached_onnx, ort_session
from vfa.registry import BACKENDS as REGISTRY
from vfa.runs import enable_compile_cache

BACKENDS = REGISTRY.names()  # declared, with their help, in vfa.registry
# Job sizes (images x TTA passes x members) from which a one-off set-up pays for itself against
# the eager path it replaces (docs/performance.md has the measurements behind them).
AUTO_COMPILE_MIN = 1000       # CPU with native bf16: compile vs torch-bf16
AUTO_COMPILE_MIN_GPU = 20000  # GPU: compile vs torch-bf16 (eager bf16 is already fast there)
AUTO_ONNX_MIN = 256           # CPU without native bf16: onnxruntime fp32 vs torch fp32
_ATTRS = ("config", "threshold", "temperature", "threshold_source")


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """bf16 matrix units in hardware: AMX or AVX512-BF16 on a CPU, compute capability 8+ on a GPU.
    Elsewhere bf16 is emulated and slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, f, lambda: False)()) for f in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


class Backend(nn.Module):
    def __init__(self, model: nn.Module, name: str, fn=None):
        super().__init__()
        self.model, self.name = model, name
        self._fn = fn or model
        for attr in _ATTRS:
            if hasattr(model, attr):
                object.__setattr__(self, attr, getattr(model, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def resolve_backend(name: str, n_images: int | None = None, device: str | torch.device = "cpu") -> str:
    """`auto` -> the fastest checked backend for a job of `n_images` forward passes on `device`:
    bf16 where the hardware has it (compiled once the job repays the compile), else fp32 (through
    onnxruntime for a long CPU job when it is installed). int8 is never chosen for the user."""
    REGISTRY.check(name, "backend")
    if name != "auto":
        return name
    device, n = torch.device(device), n_images or 0
    if device.type == "cuda":
        return "compile" if n >= AUTO_COMPILE_MIN_GPU else "torch-bf16"
    if device.type != "cpu":
        return "torch"
    if native_bf16(device):
        return "compile" if n >= AUTO_COMPILE_MIN else "torch-bf16"
    if n >= AUTO_ONNX_MIN:
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is not None:
            return "onnxruntime"
    return "torch"


def _autocast(device: torch.device):
    dtype = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _bf16_forward(model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Backbone in bf16, head in fp32: a bf16 logit keeps only ~3 significant digits, enough to
    swap the ranks of close scores (AUC); the head's cost is negligible."""
    with _autocast(device):
        feats = model.backbone(x)
    with torch.autocast(device.type, enabled=False):
        return model.head(feats.float()).squeeze(-1)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def with_backend(model: nn.Module, name: str = "torch", n_images: int | None = None, calibration=None) -> nn.Module:
    """`model` wrapped to run on backend `name` (see the module docstring); 'torch' returns it as is.
    `calibration`: image paths or a preprocessed batch, for onnxruntime-int8."""
    if isinstance(model, Backend):
        model = model.model
    device = next(model.parameters()).device
    name = resolve_backend(name, n_images, device)
    return REGISTRY.get(name)(model, device, calibration)


@REGISTRY.register("torch")
def _torch(model: nn.Module, device, calibration=None) -> nn.Module:
    return model


@REGISTRY.register("torch-bf16")
def _torch_bf16(model: nn.Module, device, calibration=None) -> nn.Module:
    model = model.to(memory_format=torch.channels_last)

    def run(x):
        return _bf16_forward(model, _channels_last(x), device)
    return Backend(model, "torch-bf16", run)


@REGISTRY.register("compile")
def _compile(model: nn.Module, device, calibration=None) -> nn.Module:
    return Backend(model.to(memory_format=torch.channels_last), "compile", _compiled_fn(model, device))


@REGISTRY.register("onnxruntime")
def _onnxruntime(model: nn.Module, device, calibration=None) -> nn.Module:
    return Backend(model, "onnxruntime", _ort_fn(cached_onnx(model)))


@REGISTRY.register("openvino")
def _openvino(model: nn.Module, device, calibration=None) -> nn.Module:
    if torch.device(device).type != "cpu":
        raise ConfigError("backend openvino runs on the CPU; use --device cpu")
    return Backend(model, "openvino", _ov_fn(cached_onnx(model), native_bf16("cpu")))


def _ov_fn(path, bf16: bool):
    try:
        import openvino as ov
    except ImportError:
        raise ConfigError("backend openvino needs the openvino package (pip install 'vfa[openvino]')") from None
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()

    def run(x):
        out = request.infer({0: x.detach().float().cpu().contiguous().numpy()})
        return torch.from_numpy(np.asarray(next(iter(out.values())))).reshape(-1).clone()

    return run


@REGISTRY.register("onnxruntime-int8")
def _onnxruntime_int8(model: nn.Module, device, calibration=None) -> nn.Module:
    if calibration is None:
        raise ConfigError("backend onnxruntime-int8 needs calibration images")
    return Backend(model, "onnxruntime-int8", _ort_fn(cached_int8(model, calibration)))


def _compiled_fn(model: nn.Module, device: torch.device):
    enable_compile_cache()
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # weights become constants: conv+BN folding, prepacked bf16 kernels

    def forward(x):
        return _bf16_forward(model, x, device)

    compiled = torch.compile(forward, dynamic=False)
    state = {"batch": None}

    @torch.inference_mode()
    def run(x):
        n = x.shape[0]
        if state["batch"] is None:
            state["batch"] = n
        pad = state["batch"] - n
        if pad > 0:  # the last, partial batch: pad instead of compiling a second graph
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
        return compiled(_channels_last(x))[:n]

    return run


def _ort_fn(path):
    session = ort_session(path)

    def run(x):
        out = session.run(None, {"image": x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(np.asarray(out)).reshape(-1)

    return run

