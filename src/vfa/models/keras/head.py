"""The head of the notebook's Keras model (after the Inception-ResNet-v2 backbone), for its importer.

GAP -> Dense(1024, relu) -> Dense(1, sigmoid), or with a BatchNormalization per hidden Dense, before
or after its ReLU. `plan_head` checks the head's weights, and a full model's JSON config when there
is one, and says which of vfa's heads the weights fit."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


def head_spec(config: dict | None) -> list[tuple[str, dict]] | None:
    """The layers after the backbone in a Sequential/Functional config: [(class_name, config)];
    a pooling layer inside a nested backbone (`pooling='avg'`) counts as the first of them."""
    if not config:
        return None
    cfg = config.get("config")
    layers = cfg if isinstance(cfg, list) else (cfg or {}).get("layers")
    if not isinstance(layers, list):
        return None
    out, seen_backbone = [], False
    for layer in layers:
        cls, lc = layer.get("class_name", ""), layer.get("config", {}) or {}
        if cls in ("Model", "Functional", "Sequential"):  # the nested Inception-ResNet-v2
            inner = lc.get("layers") if isinstance(lc, dict) else lc
            seen_backbone, out = True, [(c.get("class_name", ""), c.get("config", {}) or {})
                                        for c in (inner or []) if "Pooling2D" in c.get("class_name", "")
                                        and c.get("class_name", "").startswith("Global")]
            continue
        if lc.get("name") == "conv_7b_ac":  # a flat (functional) model: the backbone ends here
            seen_backbone, out = True, []
            continue
        if seen_backbone:
            out.append((cls, lc))
    return out if seen_backbone else None


@dataclass
class HeadPlan:
    hidden: tuple[int, ...]
    batchnorm: bool
    bn_after_relu: bool
    notes: list[str]


def plan_head(head: list[tuple[str, dict[str, np.ndarray]]], spec, bn_after_relu: bool | None,
               problems: list[str]) -> HeadPlan:
    """Check the head's weights (Dense, optional BN, Dense(1)) against the config when there is one."""
    notes: list[str] = []
    kinds = []
    for name, w in head:
        if set(w) == {"kernel", "bias"} and w["kernel"].ndim == 2:
            kinds.append("dense")
        elif {"beta", "moving_mean", "moving_variance"} <= set(w) <= {"gamma", "beta", "moving_mean",
                                                                      "moving_variance"}:
            kinds.append("bn")
        else:
            kinds.append("?")
            problems.append(f"head layer {name} with weights {sorted(w)} is neither Dense nor BatchNormalization")
    dense = [i for i, k in enumerate(kinds) if k == "dense"]
    bns = [i for i, k in enumerate(kinds) if k == "bn"]
    if len(dense) < 2:
        problems.append(f"expected GAP -> Dense(units) -> Dense(1) after conv_7b_bn, found "
                        f"{[n for n, _ in head] or 'no head layers'}")
        return HeadPlan((), False, False, notes)
    if dense[-1] != len(kinds) - 1 or head[-1][1]["kernel"].shape[1] != 1:
        problems.append(f"the last head layer must be Dense(1), found {head[-1][0]} "
                        f"{tuple(head[-1][1].get('kernel', np.empty(0)).shape)}")
    # every BN must directly follow a hidden Dense
    if any(i == 0 or kinds[i - 1] != "dense" for i in bns) or (bns and len(bns) != len(dense) - 1):
        problems.append(f"head BatchNormalization layers must follow each hidden Dense: {[n for n, _ in head]}")
    hidden = tuple(int(head[i][1]["kernel"].shape[1]) for i in dense[:-1])
    width = 1536
    for i in dense:
        k = head[i][1]["kernel"]
        if k.shape[0] != width:
            problems.append(f"{head[i][0]}: kernel {tuple(k.shape)} does not take {width} inputs")
        width = k.shape[1]
    for i in bns:
        units = head[i - 1][1]["kernel"].shape[1] if i else 0
        if any(head[i][1][k].shape != (units,) for k in head[i][1]):
            problems.append(f"{head[i][0]}: BatchNormalization size does not match {units} units")

    if spec is not None:  # a full model: check pooling, activations and where the ReLU sits
        tokens = ""
        for cls, lc in spec:
            act = lc.get("activation")
            if cls == "Dense":
                tokens += {"relu": "r", "linear": "l", "sigmoid": "s"}.get(act, "?")
                if act not in ("relu", "linear", "sigmoid"):
                    problems.append(f"{lc.get('name')}: activation {act!r} (vfa's head uses relu, then sigmoid)")
            elif cls == "BatchNormalization":
                tokens += "b"
                if abs(float(lc.get("epsilon", 1e-3)) - 1e-3) > 1e-9:
                    problems.append(f"{lc.get('name')}: epsilon {lc.get('epsilon')} (vfa uses 1e-3)")
            elif cls in ("Activation", "ReLU"):
                tokens += "a" if cls == "ReLU" or act == "relu" else "x" if act == "sigmoid" else "?"
                if cls == "Activation" and act not in ("relu", "sigmoid"):
                    problems.append(f"{lc.get('name')}: activation {act!r} in the head (vfa uses relu, then sigmoid)")
            elif cls == "Dropout":
                notes.append(f"{lc.get('name')}: Dropout({lc.get('rate')}) ignored (inactive at inference)")
            elif cls == "GlobalAveragePooling2D":
                tokens += "g"
            elif cls != "InputLayer":
                problems.append(f"head layer {lc.get('name')} of class {cls} is not supported "
                                f"(vfa: GlobalAveragePooling2D, Dense, BatchNormalization, ReLU)")
        if not tokens.startswith("g"):
            problems.append("the backbone must be followed by GlobalAveragePooling2D")
        # per hidden layer: Dense(relu) | Dense + ReLU | Dense + BN + ReLU | Dense(relu) + BN; then Dense(sigmoid)
        if not re.fullmatch(r"g(?:rb|lba|la|r)+(?:s|lx)", tokens):
            problems.append(f"unsupported head {[(c, lc.get('activation', '')) for c, lc in spec]}: vfa's head "
                            f"is GAP -> (Dense -> [BN] -> ReLU) per hidden layer -> Dense(1, sigmoid)")
        if bn_after_relu is None:
            bn_after_relu = "rb" in tokens
    elif bns:
        notes.append("weights-only file: the head's BatchNormalization is taken to sit between Dense and ReLU "
                     "(pass bn_after_relu=True / --bn-after-relu if it followed the ReLU)")
    bn_after_relu = bool(bn_after_relu) and bool(bns)
    if bn_after_relu:
        if len(hidden) != 1:
            problems.append("a BatchNormalization after the ReLU can only be folded with one hidden Dense")
        notes.append("the head's BatchNormalization follows the ReLU: folded exactly into the last Dense "
                     "(identical inference; fine-tuning trains the folded head without that BN)")
    return HeadPlan(hidden, bool(bns) and not bn_after_relu, bn_after_relu, notes)
