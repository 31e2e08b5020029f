"""Import the notebook's Keras 2.x model (`.h5`) into vfa, with h5py only: no TensorFlow.

Reads both HDF5 layouts Keras 2.x writes: a whole model (`model.save`: weights under
`model_weights`, the architecture as JSON in `model_config`) and a weights-only file
(`model.save_weights`). Only arrays and the JSON text are read: nothing in the file is ever
executed or deserialised as code (the Lambda layers' marshalled functions stay inert text).

Mapping (see docs/notebook-differences.md, "Model"):

* Keras' `InceptionResNetV2` creates its unnamed `conv2d_N` / `batch_normalization_N` layers in
  the same order as timm's `inception_resnet_v2` registers its `ConvNormAct` modules, so they are
  paired by the **sorted numeric suffix** (2018 Keras: `conv2d_1..203`; tf-keras: `conv2d`,
  `conv2d_1..202`; earlier models in the same session only offset N). The named layers map
  explicitly: `block35_k_conv` -> `repeat[k-1].conv2d`, `block17_k_conv` -> `repeat_1[k-1].conv2d`,
  `block8_k_conv` -> `repeat_2[k-1].conv2d` (k = 10: `block8.conv2d`), `conv_7b(_bn)` -> `conv2d_7b`.
* Weights are matched by name, never by position (Keras lists trainable weights before
  non-trainable ones). Conv kernels HWIO -> OIHW (permute 3, 2, 0, 1), Dense kernels transposed.
  Keras' backbone BN has no gamma (`scale=False`): timm's weight is set to 1. eps is 1e-3 on both.
* The head: GAP -> Dense(1024, relu) -> Dense(1, sigmoid), or the "with BN" variant
  Dense -> BatchNormalization -> ReLU -> Dense. A BN placed *after* the ReLU (only a full model's
  config can say so) is folded exactly into the last Dense, which is equivalent in inference.
  The head is checked in vfa.models.keras.head.

The checkpoint records the notebook's preprocessing: RGB / 255 (gray scans: R = G = B), PIL-nearest
resize to 600x360 (or the model's fixed input size), i.e. the `keras215` preset.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vfa import checkpoint
from vfa.config import ConfigError
from vfa.runs import refuse_existing
from vfa.models.keras.head import HeadPlan, head_spec, plan_head

__all__ = ["KerasImportError", "read_keras_h5", "import_keras", "keras_to_vfa"]

_CONV = re.compile(r"^conv2d(?:_(\d+))?$")
_BN = re.compile(r"^batch_normalization(?:_(\d+))?$")
_BLOCK = re.compile(r"^block(35|17|8)_(\d+)_conv$")
_BLOCKS = {"35": 10, "17": 20, "8": 10}
# TF1 graph mode uniquifies a variable scope already in use (a model loaded into a session that
# already held one): layer conv2d_5's weights are then saved as conv2d_5_1/kernel:0.
_UNIQUIFIED = re.compile(r"^(conv2d_\d+|batch_normalization_\d+|block(?:35|17|8)_\d+_conv|conv_7b|conv_7b_bn)_\d+$")
N_CONV_BN = 203  # unnamed conv2d_bn pairs in Keras' InceptionResNetV2


class KerasImportError(ConfigError):
    """The .h5 file is not (a weights file of) the notebook's architecture."""


@dataclass
class KerasFile:
    """What an .h5 file holds: ordered (layer name, {weight name: array}) and the model's JSON config."""
    layers: list[tuple[str, dict[str, np.ndarray]]]
    config: dict | None = None
    keras_version: str | None = None
    backend: str | None = None
    layout: str = "weights"  # "model" (model.save) or "weights" (model.save_weights)


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_keras_h5(path: str | Path) -> KerasFile:
    """Every weight in a Keras 2.x HDF5 file, grouped by the (innermost) layer that owns it.

    Weight names are `LAYER/WEIGHT:0` (a nested model's group lists its layers' weights so); layers
    appear in the order their first weight is listed, which follows construction order."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Keras file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise KerasImportError(f"{path}: not an HDF5 file ({exc})") from None
    with f:
        layout = "model" if "model_weights" in f else "weights"
        group = f["model_weights"] if layout == "model" else f
        if "layer_names" not in group.attrs:
            keras3 = "layers" in group or "_layer_checkpoint_dependencies" in group
            hint = " (a Keras 3 .weights.h5 file? save with Keras 2 / tf-keras)" if keras3 else ""
            raise KerasImportError(f"{path}: not a Keras 2.x HDF5 model or weights file: no layer_names{hint}")
        config = None
        if "model_config" in f.attrs:
            try:
                config = json.loads(_text(f.attrs["model_config"]))  # JSON only: no layer is built
            except ValueError:
                config = None
        keras_version = _text(group.attrs.get("keras_version", f.attrs.get("keras_version", b""))) or None
        backend = _text(group.attrs.get("backend", f.attrs.get("backend", b""))) or None
        layers: dict[str, dict[str, np.ndarray]] = {}
        for top in (_text(n) for n in group.attrs["layer_names"]):
            lg = group[top]
            for wname in (_text(n) for n in lg.attrs.get("weight_names", [])):
                parts = wname.split(":")[0].split("/")
                owner = _owner(parts[-2]) if len(parts) >= 2 else top
                weight = parts[-1]
                if owner in layers and weight in layers[owner]:
                    raise KerasImportError(f"{path}: weight {wname} appears twice")
                layers.setdefault(owner, {})[weight] = np.asarray(lg[wname][()])
    return KerasFile(list(layers.items()), config, keras_version, backend, layout)


def _owner(scope: str) -> str:
    """The layer a weight's name scope belongs to, undoing TF1's scope uniquification."""
    for rx in (_CONV, _BN, _BLOCK):
        if rx.match(scope):
            return scope
    if scope in ("conv_7b", "conv_7b_bn"):
        return scope
    m = _UNIQUIFIED.match(scope)
    return m.group(1) if m else scope


def _suffix(match: re.Match) -> int:
    return -1 if match.group(1) is None else int(match.group(1))  # tf-keras: `conv2d` precedes `conv2d_1`


def _input_size(config: dict | None) -> tuple[int, int] | None:
    """A fixed (H, W) input size from the config, if the model was built with one."""
    found: list[tuple[int, int]] = []

    def walk(node):
        if isinstance(node, dict):
            shape = node.get("batch_input_shape") or node.get("batch_shape")
            if isinstance(shape, list) and len(shape) == 4 and all(isinstance(v, int) for v in shape[1:3]):
                found.append((shape[1], shape[2]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return found[0] if found else None


# (torch parameter, Keras array or None when missing, Keras name, kind: conv | dense | vec)
Pair = tuple[torch.Tensor, np.ndarray | None, str, str]


@dataclass
class _Backbone:
    """The Keras backbone's layers by kind: conv2d_N and batch_normalization_N as (N, name, weights)
    sorted by N, the blockB_k_conv layers by (B, k), and conv_7b / conv_7b_bn by name."""
    convs: list[tuple[int, str, dict]]
    bns: list[tuple[int, str, dict]]
    blocks: dict[tuple[str, int], tuple[str, dict]]
    named: dict[str, dict]


def keras_to_vfa(kf: KerasFile, bn_after_relu: bool | None = None, source: str = "the file"):
    """(VFANet with the Keras weights, model config overrides, notes). Raises KerasImportError
    listing what did not match.

    Matches the Keras layer list onto timm's Inception-ResNet-v2 as docs/notebook-differences.md
    describes (the stem and block convolutions by number and name, then the head), collecting every
    mismatch of a stage before raising, so that one run names them all."""
    from vfa.models.network import build_model

    body, head = _split_at_backbone_end(kf, source)
    problems: list[str] = []
    plan = plan_head(head, head_spec(kf.config), bn_after_relu, problems)
    layers = _sort_backbone(body, problems)
    if problems:
        raise KerasImportError(f"{source} does not match the notebook's architecture "
                               f"(Inception-ResNet-v2 -> GAP -> Dense -> Dense(1)):\n  - " + "\n  - ".join(problems))

    model = build_model("inception_resnet_v2", head=plan.hidden or (1024,), head_batchnorm=plan.batchnorm)
    pairs = _backbone_pairs(model.backbone, layers, problems)
    pairs += _head_pairs(model.head, head, plan, problems)
    _copy_weights(pairs, problems)
    if problems:
        raise KerasImportError(f"{source} does not match the notebook's architecture:\n  - "
                               + "\n  - ".join(problems[:30]))
    for m in model.modules():  # the statistics are Keras' own; the counter only matters for momentum=None
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.num_batches_tracked is not None:
            m.num_batches_tracked.zero_()
    overrides = {"backbone": "inception_resnet_v2", "pretrained": False, "head": list(plan.hidden),
                 "head_batchnorm": plan.batchnorm, "global_pool": "avg", "backbone_kwargs": {},
                 "head_dropout": 0.0, "init": "keras"}
    offset = layers.convs[0][0]
    notes = list(plan.notes)
    notes.append(f"mapped {len(pairs)} tensors from {len(body) + len(head)} Keras layers "
                 f"({'tf-keras naming' if offset == -1 else f'conv2d_{offset}..conv2d_{layers.convs[-1][0]}'})")
    return model.eval(), overrides, notes


def _split_at_backbone_end(kf: KerasFile, source: str) -> tuple[list, list]:
    """(backbone layers, head layers): the backbone ends at conv_7b_bn; a file without one is refused."""
    names = [n for n, _ in kf.layers]
    if "conv_7b_bn" not in names:
        unknown = [n for n in names if not (_CONV.match(n) or _BN.match(n) or _BLOCK.match(n))]
        raise KerasImportError(
            f"{source} is not the notebook's Inception-ResNet-v2 model: no layer conv_7b_bn "
            f"({len(names)} layers with weights; e.g. {', '.join(names[:6])}"
            + (f"; unexpected: {', '.join(unknown[:10])}" if unknown else "") + ")")
    cut = names.index("conv_7b_bn") + 1
    return kf.layers[:cut], kf.layers[cut:]


def _sort_backbone(body: list, problems: list[str]) -> _Backbone:
    """The backbone's layers by kind; a layer that matches none, or a missing one, goes to `problems`."""
    layers, unmatched = _Backbone([], [], {}, {}), []
    for name, w in body:
        if m := _CONV.match(name):
            layers.convs.append((_suffix(m), name, w))
        elif m := _BN.match(name):
            layers.bns.append((_suffix(m), name, w))
        elif m := _BLOCK.match(name):
            layers.blocks[(m.group(1), int(m.group(2)))] = (name, w)
        elif name in ("conv_7b", "conv_7b_bn"):
            layers.named[name] = w
        else:
            unmatched.append(name)
    if unmatched:
        problems.append(f"{len(unmatched)} backbone layer(s) match no Inception-ResNet-v2 layer: "
                        f"{', '.join(unmatched[:12])}{' ...' if len(unmatched) > 12 else ''}")
    convs, bns, blocks = layers.convs, layers.bns, layers.blocks
    if len(convs) != N_CONV_BN or len(bns) != N_CONV_BN:
        gaps = [f"{prefix}_{n}" for prefix, items in (("conv2d", convs), ("batch_normalization", bns)) if items
                for n in sorted(set(range(max(min(i for i, _, _ in items), 1), max(i for i, _, _ in items) + 1))
                                - {i for i, _, _ in items})]
        problems.append(f"expected {N_CONV_BN} conv2d_N and {N_CONV_BN} batch_normalization_N layers "
                        f"(Inception-ResNet-v2), found {len(convs)} and {len(bns)}"
                        + (f"; missing from the numbering: {', '.join(gaps[:12])}" if gaps else ""))
    missing = [f"block{b}_{k}_conv" for b, n in _BLOCKS.items() for k in range(1, n + 1) if (b, k) not in blocks]
    extra = [name for (b, k), (name, _) in blocks.items() if k > _BLOCKS[b]]
    missing += [n for n in ("conv_7b",) if n not in layers.named]
    if missing or extra:
        problems.append("missing: " + ", ".join(missing[:12]) + (" ..." if len(missing) > 12 else "")
                        if missing else f"unexpected: {', '.join(extra)}")
    convs.sort(key=lambda t: t[0])
    bns.sort(key=lambda t: t[0])
    return layers


def _conv_pairs(module, kname: str, w: dict, bias: bool, problems: list[str]) -> list[Pair]:
    pairs = [(module.weight, w.get("kernel"), f"{kname}/kernel", "conv")]
    if bias:
        pairs.append((module.bias, w.get("bias"), f"{kname}/bias", "vec"))
    elif "bias" in w:
        problems.append(f"{kname} has a bias; Inception-ResNet-v2's conv2d_bn convs have none")
    return pairs


def _bn_pairs(module, kname: str, w: dict, problems: list[str]) -> list[Pair]:
    gamma = w.get("gamma")
    if gamma is None:  # scale=False: gamma = 1
        gamma = np.ones_like(w["beta"]) if "beta" in w else None
    pairs = [(param, arr, f"{kname}/{key}", "vec")
             for param, key, arr in ((module.weight, "gamma", gamma), (module.bias, "beta", w.get("beta")),
                                     (module.running_mean, "moving_mean", w.get("moving_mean")),
                                     (module.running_var, "moving_variance", w.get("moving_variance")))]
    if abs(module.eps - 1e-3) > 1e-12:
        problems.append(f"timm BN eps {module.eps} != Keras 1e-3")
    return pairs


def _backbone_pairs(bb, layers: _Backbone, problems: list[str]) -> list[Pair]:
    """timm's backbone parameters against the Keras layers: the unnamed conv2d_bn pairs in order,
    then the blocks' and conv_7b's named convolutions."""
    from timm.layers import ConvNormAct

    cnas = [m for n, m in bb.named_modules() if isinstance(m, ConvNormAct) and n != "conv2d_7b"]
    assert len(cnas) == N_CONV_BN, len(cnas)  # timm's architecture changed: update the mapping
    pairs: list[Pair] = []
    for cna, (_, cname, cw), (_, bname, bw) in zip(cnas, layers.convs, layers.bns):
        pairs += _conv_pairs(cna.conv, cname, cw, False, problems)
        pairs += _bn_pairs(cna.bn, bname, bw, problems)
    for b, attr in (("35", "repeat"), ("17", "repeat_1"), ("8", "repeat_2")):
        for k in range(1, _BLOCKS[b] + 1):
            module = bb.block8 if (b == "8" and k == 10) else getattr(bb, attr)[k - 1]
            name, w = layers.blocks[(b, k)]
            pairs += _conv_pairs(module.conv2d, name, w, True, problems)
    pairs += _conv_pairs(bb.conv2d_7b.conv, "conv_7b", layers.named["conv_7b"], False, problems)
    if "conv_7b_bn" in layers.named:
        pairs += _bn_pairs(bb.conv2d_7b.bn, "conv_7b_bn", layers.named["conv_7b_bn"], problems)
    return pairs


def _head_pairs(model_head, head: list, plan: HeadPlan, problems: list[str]) -> list[Pair]:
    """The Linear and BatchNorm1d modules of vfa's head, in order, against the Keras head layers."""
    linears = [m for m in model_head if isinstance(m, torch.nn.Linear)]
    norms = [m for m in model_head if isinstance(m, torch.nn.BatchNorm1d)]
    kdense = [(n, w) for n, w in head if "kernel" in w]
    kbn = [(n, w) for n, w in head if "moving_mean" in w]
    if plan.bn_after_relu:
        kdense = kdense[:-1] + [(kdense[-1][0] + " (BN folded)", _fold_bn(kbn[0][1], kdense[-1][1]))]
    pairs: list[Pair] = []
    for lin, (name, w) in zip(linears, kdense):
        pairs.append((lin.weight, w["kernel"], f"{name}/kernel", "dense"))
        pairs.append((lin.bias, w["bias"], f"{name}/bias", "vec"))
    if plan.batchnorm:
        for norm, (name, w) in zip(norms, kbn):
            pairs += _bn_pairs(norm, name, w, problems)
    return pairs


def _fold_bn(w_bn: dict, w_out: dict) -> dict[str, np.ndarray]:
    """relu -> BN -> Dense(1) as one Dense: W' = W * s, b' = b + W . (beta - s * mean), exact in inference."""
    gamma = w_bn.get("gamma", np.ones_like(w_bn["beta"])).astype(np.float64)
    s = gamma / np.sqrt(w_bn["moving_variance"].astype(np.float64) + 1e-3)
    shift = w_bn["beta"].astype(np.float64) - s * w_bn["moving_mean"].astype(np.float64)
    kernel = w_out["kernel"].astype(np.float64)
    return {"kernel": (kernel * s[:, None]).astype(np.float32),
            "bias": (w_out["bias"].astype(np.float64) + shift @ kernel).astype(np.float32)}


def _copy_weights(pairs: list[Pair], problems: list[str]) -> None:
    """Each Keras array into its parameter (conv kernels HWIO -> OIHW, Dense kernels transposed);
    a missing array or a shape that does not fit goes to `problems` instead."""
    with torch.no_grad():
        for param, arr, kname, kind in pairs:
            if arr is None:
                problems.append(f"{kname}: missing")
                continue
            t = torch.from_numpy(np.ascontiguousarray(arr)).float()
            if kind == "conv":
                t = t.permute(3, 2, 0, 1) if t.ndim == 4 else t
            elif kind == "dense":
                t = t.t()
            if tuple(t.shape) != tuple(param.shape):
                problems.append(f"{kname}: Keras shape {tuple(arr.shape)} does not fit vfa's {tuple(param.shape)}")
                continue
            param.copy_(t)


def import_keras(h5: str | Path, out: str | Path | None = None, size: tuple[int, int] | None = None,
                 bn_after_relu: bool | None = None, force: bool = False, log=print):
    """Read the notebook's `.h5` (full model or weights only) and write a vfa checkpoint.

    The checkpoint's config is the `keras215` preset (RGB/255, PIL-nearest resize) at `size`
    (default: the model's fixed input size, else the notebook's 600x360). Returns (model, path)."""
    from vfa import config as config_mod

    h5 = Path(h5)
    if out is not None:
        refuse_existing(out, force, inputs=[h5])
    kf = read_keras_h5(h5)
    model, model_cfg, notes = keras_to_vfa(kf, bn_after_relu, source=str(h5))
    fixed = _input_size(kf.config)
    if size is None:
        size = fixed or (600, 360)
    elif fixed and tuple(size) != tuple(fixed):
        notes.append(f"the Keras model was built for {fixed[0]}x{fixed[1]} inputs; importing at {size[0]}x{size[1]}")
    cfg = config_mod.resolve("keras215", overrides={"model": model_cfg, "data": {"size": list(size)}})
    model.config = cfg
    model.threshold, model.temperature = 0.5, 1.0
    model.threshold_source = "default 0.5 (as the notebook)"
    for note in notes:
        log(f"note: {note}")
    if out is None:
        return model, None
    source = {"keras_file": h5.name, "layout": kf.layout, "keras_version": kf.keras_version or "",
              "backend": kf.backend or "", "notes": notes}
    out = checkpoint.save(out, model, cfg, force=True, vfa_source=source)
    log(f"wrote {out}: Inception-ResNet-v2, head {tuple(model_cfg['head'])}"
        f"{' + BN' if model_cfg['head_batchnorm'] else ''}, {size[0]}x{size[1]}, nearest resize "
        f"(preset keras215), from a Keras {kf.keras_version or '?'} "
        f"{'model' if kf.layout == 'model' else 'weights'} file")
    return model, out
