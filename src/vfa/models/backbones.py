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


def _conv(cin: int, cout: int, stride: int = 1, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, dilation * (kernel // 2), dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DenseMaxPool(nn.Module):
    """MaxPool2d(2) evaluated at every position of a map already `dilation` times denser than the
    pooled network's: out[i] = max(x[i], x[i + dilation]) (per axis), -inf padded at the far edge.
    With the following convolutions dilated to match, the network computes the stride-32 network's
    outputs at stride 32 / 2^k (its [::2^k, ::2^k] samples are those outputs exactly) with the same
    weights: shift-and-stitch / a trous (Long et al. 2015; Chen et al. 2015). Grad-CAM uses it for
    finer maps of a network trained at full stride."""

    def __init__(self, dilation: int):
        super().__init__()
        self.dilation = dilation
        self.average = False  # the same window averaged: vfa.cam's geometry twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dilation
        if self.average:
            x = nn.functional.pad(x, (0, d, 0, d))
            return (x[..., :-d, :-d] + x[..., d:, :-d] + x[..., :-d, d:] + x[..., d:, d:]) / 4
        x = nn.functional.pad(x, (0, d, 0, d), value=float("-inf"))
        return nn.functional.max_pool2d(x, 2, stride=1, dilation=d)


class SmallCNN(nn.Module):
    """timm-style: `num_features`, `forward_features` (last feature map), `forward_head`, `reset_classifier`."""

    def __init__(self, widths=(16, 24, 32, 48, 64, 64), num_classes: int = 0, in_chans: int = 3,
                 global_pool: str = "max", drop_rate: float = 0.0, output_stride: int = 32,
                 kernels: tuple[int, ...] | None = None, **_):
        super().__init__()
        # kernel size of each conv after the stem; 1s in the last stages bound the receptive field,
        # so that global max pooling sees local evidence only (default: all 3, RF 159 px)
        kernels = tuple(kernels or (3,) * (len(widths) - 1))
        if len(kernels) != len(widths) - 1 or any(k % 2 == 0 or k < 1 for k in kernels):
            raise ValueError(f"vfa_cnn_small: kernels must be {len(widths) - 1} odd sizes, got {kernels}")
        stride = 2 ** (len(widths) - 1)
        if output_stride not in [stride >> k for k in range(len(widths) - 2)]:
            raise ValueError(f"vfa_cnn_small: output_stride must be one of "
                             f"{[stride >> k for k in range(len(widths) - 2)]}, got {output_stride}")
        layers = [_conv(in_chans, widths[0], stride=2, kernel=5), _conv(widths[0], widths[1], kernel=kernels[0])]
        reduction, dilation = 2, 1
        for cin, cout, kernel in zip(widths[1:-1], widths[2:], kernels[1:]):
            if reduction < output_stride:
                layers.append(nn.MaxPool2d(2))
                reduction *= 2
            else:  # past output_stride: the same pooling, evaluated at every position (a trous)
                layers.append(DenseMaxPool(dilation))
                dilation *= 2
            layers.append(_conv(cin, cout, kernel=kernel, dilation=dilation))
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
