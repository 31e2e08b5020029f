"""Small backbones registered with timm, so they are created by name like any timm model.

`vfa_cnn_small` is a plain VGG-style network (conv-BN-ReLU, max pooling) for the CPU demo and
quick experiments. On the phantom a from-scratch ResNet-18, even narrowed, sits at chance for
many epochs, while this net keeps full resolution for two convolutions before pooling and
starts learning within a few epochs: a fracture is a few pixels of height lost on one vertebra.
Importing `vfa.model` registers it.
"""
from __future__ import annotations

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models import register_model
from torch import nn


def _conv(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """timm-style: `num_features`, `forward_features` (last feature map), `forward_head`, `reset_classifier`."""

    def __init__(self, widths=(16, 24, 32, 48, 64, 64), num_classes: int = 0, in_chans: int = 3,
                 global_pool: str = "max", drop_rate: float = 0.0, **_):
        super().__init__()
        layers = [_conv(in_chans, widths[0], stride=2, kernel=5), _conv(widths[0], widths[1])]
        for cin, cout in zip(widths[1:-1], widths[2:]):
            layers += [nn.MaxPool2d(2), _conv(cin, cout)]
        self.features = nn.Sequential(*layers)
        self.num_features = self.head_hidden_size = widths[-1]
        self.drop_rate = drop_rate
        self.reset_classifier(num_classes, global_pool)

    def reset_classifier(self, num_classes: int, global_pool: str = "max") -> None:
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        pooled = self.num_features * self.global_pool.feat_mult()
        self.fc = nn.Linear(pooled, num_classes) if num_classes else nn.Identity()
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = nn.functional.dropout(self.global_pool(x), self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def vfa_cnn_small(pretrained: bool = False, **kwargs) -> SmallCNN:
    if pretrained:
        raise ValueError("vfa_cnn_small has no pretrained weights")
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    return SmallCNN(**kwargs)
