"""The notebook's network: any timm backbone -> global average pooling -> Dense(1024)+ReLU -> Dense(1).

The model returns the fracture logit; P(fracture) = sigmoid(logit). Inputs are RGB in [0, 1] with
no mean/std normalisation, as the notebook fed Keras.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from vfa.config import ConfigError


def p_fracture(logits, temperature: float = 1.0):
    """P(fracture) = sigmoid(logit / T), for a tensor (float32 tensor out), an array or a float (float64)."""
    if isinstance(logits, torch.Tensor):
        return torch.sigmoid(logits.float() / float(temperature))
    if isinstance(logits, int | float):
        try:
            return 1 / (1 + math.exp(-float(logits) / float(temperature)))
        except OverflowError:  # a logit below about -700 T
            return 0.0
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    out = 1 / (1 + np.exp(-z))
    return float(out) if out.ndim == 0 else out


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class VFANet(nn.Module):
    def __init__(self, backbone: nn.Module, head: tuple[int, ...] = (1024,), head_batchnorm: bool = False,
                 head_dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone  # features -> GAP, built with num_classes=0
        layers: list[nn.Module] = []
        # pooled width: some timm nets (MobileNetV3, ...) add a conv head after the features
        width = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        for units in head:
            layers.append(nn.Linear(width, units))
            if head_batchnorm:
                layers.append(nn.BatchNorm1d(units, eps=1e-3, momentum=0.01))  # Keras defaults
            layers.append(nn.ReLU(inplace=True))
            if head_dropout:
                layers.append(nn.Dropout(head_dropout))
            width = units
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map (B, C, h, w): the Grad-CAM target."""
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).squeeze(-1)


def keras_init_(module: nn.Module) -> nn.Module:
    """Initialise as Keras did: glorot-uniform conv/dense kernels, zero biases, BN gamma=1 beta=0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def build_model(backbone: str = "inception_resnet_v2", pretrained: bool = False, head: tuple[int, ...] = (1024,),
                head_batchnorm: bool = False, head_dropout: float = 0.0, init: str = "timm",
                in_chans: int = 3, global_pool: str = "avg", backbone_kwargs: dict | None = None) -> VFANet:
    """Build the seed's architecture around any timm backbone name.

    `backbone_kwargs` go to `timm.create_model` (e.g. ResNet `channels`, `stem_width` for a
    narrower network); `global_pool` is timm's: avg (the notebook's GAP), max, avgmax, catavgmax.
    """
    import timm  # here: importing timm imports torchvision and torch._dynamo (~1.2 s), which a process
    # that runs a cached ONNX engine never needs (vfa.inference.onnx_engine)

    from vfa.models import backbones  # noqa: F401  (registers vfa's small timm backbones)

    if backbone not in timm.list_models() and backbone not in timm.list_models(pretrained=True):
        raise ConfigError(f"unknown timm backbone '{backbone}' (model.backbone; see timm.list_models())")
    net = timm.create_model(backbone, pretrained=pretrained, num_classes=0, global_pool=global_pool,
                            in_chans=in_chans, **(backbone_kwargs or {}))
    model = VFANet(net, tuple(head), head_batchnorm, head_dropout)
    if init == "keras":
        keras_init_(model if not pretrained else model.head)
    elif init != "timm":
        raise ConfigError(f"unknown init '{init}' (model.init; valid: timm, keras)")
    return model


def build_from_config(model_cfg) -> VFANet:
    return build_model(model_cfg.backbone, model_cfg.pretrained, tuple(model_cfg.head), model_cfg.head_batchnorm,
                       model_cfg.head_dropout, model_cfg.init, global_pool=model_cfg.global_pool,
                       backbone_kwargs=model_cfg.backbone_kwargs)


def build_network(cfg) -> VFANet:
    """The image family's build step (vfa.registry.FAMILIES): the network of a whole config."""
    return build_from_config(cfg.model)
