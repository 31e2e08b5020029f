"""The per-vertebra model family: a spine detector and a landmark network on timm backbones.

    image --(resize to vertebra.detector_size)--> SpineDetector: centre heatmap, sub-cell offset and
        level logits at stride 4 (CenterNet-style, on a small feature pyramid)
    each body --(rotated crop, vfa.models.crops)--> LandmarkNet: six point heatmaps read out by
        soft-argmax (sub-pixel), a fracture logit and a readability logit (can this body be read?)

Genant grade and type follow from the predicted points by the morphometry rules
(vfa.stats.morphometry); the landmark net's fracture logit gives each body's P(fracture). Beside the
rules, a learned grade: the fracture logit is P(grade >= 1) and a severity head gives P(grade >= 2)
and P(grade >= 3) of a fractured body (vertebra.grading says which of the two grades a body:
vfa.inference.vertebra).
"""
from __future__ import annotations

import timm
import torch
from torch import nn
from torch.nn import functional as F

from vfa.stats.morphometry import LEVELS


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Pyramid(nn.Module):
    """timm backbone (features_only) + top-down merge to its finest requested stride."""

    def __init__(self, backbone: str, out_indices: tuple[int, ...], width: int, pretrained: bool = False):
        super().__init__()
        self.body = timm.create_model(backbone, features_only=True, in_chans=1, out_indices=out_indices,
                                      pretrained=pretrained)
        chans = self.body.feature_info.channels()
        self.stride = self.body.feature_info.reduction()[0]
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in chans)
        self.smooth = _conv(width, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the merged map at the finest stride, the deepest feature map)"""
        feats = self.body(x)
        top = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            top = lat(f) + F.interpolate(top, size=f.shape[-2:], mode="nearest")
        return self.smooth(top), feats[-1]


class SpineDetector(nn.Module):
    """Centre heatmap (1), offset to the true centre in cells (2), level logits (13) at stride 4."""

    def __init__(self, backbone: str = "resnet18", width: int = 64, pretrained: bool = False):
        super().__init__()
        self.pyramid = Pyramid(backbone, (1, 2, 3, 4), width, pretrained)
        self.heads = nn.ModuleDict({name: nn.Sequential(_conv(width, width), nn.Conv2d(width, k, 1))
                                    for name, k in (("heat", 1), ("offset", 2), ("level", len(LEVELS)))})
        self.heads["heat"][-1].bias.data.fill_(-2.19)   # CenterNet's prior: sigmoid = 0.1

    @property
    def stride(self) -> int:
        return self.pyramid.stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f, _ = self.pyramid(x)
        return {name: head(f) for name, head in self.heads.items()}


def soft_argmax(heat: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) logits -> (B, K, 2) expected x, y in [-0.5, 0.5] of the map (cell centres)."""
    b, k, h, w = heat.shape
    prob = heat.float().flatten(2).softmax(-1).view(b, k, h, w)
    xs = (torch.arange(w, device=heat.device, dtype=torch.float32) + 0.5) / w - 0.5
    ys = (torch.arange(h, device=heat.device, dtype=torch.float32) + 0.5) / h - 0.5
    return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], dim=-1)


# the readability head's bias before training, and that of a checkpoint written without the head:
# sigmoid(6) = 0.9975, so an untrained or missing head calls every body evaluable
READABLE_PRIOR = 6.0
# the severity head's bias in a checkpoint written without it: P(grade >= 2 | fractured) 0.0025, so
# such a checkpoint grades what it calls fractured 1 (a new head starts at 0: no preference)
SEVERITY_PRIOR = -6.0


class LandmarkNet(nn.Module):
    """A crop centred on one body -> its six points (crop coordinates in [-0.5, 0.5]), a fracture
    logit, a readability logit (P(the body can be read) = its sigmoid) and two severity logits
    (P(grade >= 2), P(grade >= 3), given that the body is fractured)."""

    def __init__(self, backbone: str = "resnet18", width: int = 64, pretrained: bool = False):
        super().__init__()
        self.pyramid = Pyramid(backbone, (0, 1, 2, 3), width, pretrained)
        self.points = nn.Sequential(_conv(width, width), nn.Conv2d(width, 6, 1))
        deep = self.pyramid.body.feature_info.channels()[-1]
        self.fracture = nn.Sequential(nn.Dropout(0.2), nn.Linear(deep + width, 1))
        # built last and from a forked RNG, zero weights: every other weight, and every draw of a
        # seeded run after the build, is what it was before the head existed
        with torch.random.fork_rng(devices=[]):
            self.readable = nn.Linear(deep + width, 1)
            self.severity = nn.Linear(deep + width, 2)
        for head, prior in ((self.readable, READABLE_PRIOR), (self.severity, 0.0)):
            nn.init.zeros_(head.weight)
            nn.init.constant_(head.bias, prior)
        self._register_load_state_dict_pre_hook(_without_later_heads)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        f, deep = self.pyramid(crops)
        pts = soft_argmax(self.points(f))
        pooled = torch.cat([deep.float().mean((2, 3)), f.float().mean((2, 3))], 1)
        # the severity head reads the features detached: training it never moves the network the
        # points, fracture and readability heads share, so a run's other outputs are what they were
        # without it (and the rules' grades with them)
        return (pts, self.fracture(pooled).squeeze(1), self.readable(pooled).squeeze(1),
                self.severity(pooled.detach()))


def _without_later_heads(state_dict, prefix, *args) -> None:
    """A checkpoint written before the readability or severity head: the head it lacks has zero
    weights and its prior bias, so every body it reads is evaluable and a body it calls fractured by
    the learned grade is grade 1, as such a checkpoint could say."""
    like = state_dict.get(prefix + "fracture.1.weight")
    if like is None:
        return
    for name, k, prior in (("readable", 1, READABLE_PRIOR), ("severity", 2, SEVERITY_PRIOR)):
        key = f"{prefix}{name}."
        if key + "weight" not in state_dict:
            state_dict[key + "weight"] = like.new_zeros((k, like.shape[1]))
            state_dict[key + "bias"] = torch.full((k,), prior, dtype=like.dtype, device=like.device)


class VertebraNet(nn.Module):
    """Both networks of the per-vertebra model, as one module (one checkpoint, one state dict)."""

    def __init__(self, detector: SpineDetector, landmarks: LandmarkNet):
        super().__init__()
        self.detector, self.landmarks = detector, landmarks


def build_vertebra_model(vcfg) -> VertebraNet:
    """The VertebraNet that a config's `vertebra` section describes."""
    return VertebraNet(SpineDetector(vcfg.detector_backbone, vcfg.width, vcfg.pretrained),
                       LandmarkNet(vcfg.landmark_backbone, vcfg.width, vcfg.pretrained))


def build_network(cfg) -> VertebraNet:
    """The per-vertebra family's build step (vfa.registry.FAMILIES): the network of a whole config."""
    return build_vertebra_model(cfg.vertebra)
