"""Baseline CAM (Zhou et al., CVPR 2016, as trained in IRN): backbone, 1x1 conv classifier without bias,
global average pooling, multilabel soft-margin loss. The CAM is the ReLU of the classifier applied per pixel."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbone import Backbone


@dataclass(frozen=True)
class CamModelConfig:
    backbone: str = "resnet10"
    output_stride: int = 16
    pretrained: str = "none"


class BaselineCam(nn.Module):
    @dataclass(frozen=True)
    class Options:
        """The baseline has no hyper-parameters of its own."""

    def __init__(self, config: CamModelConfig, num_classes: int, options: Options = Options()):
        super().__init__()
        self.backbone = Backbone(config.backbone, config.output_stride, config.pretrained)
        self.classifier = nn.Conv2d(self.backbone.channels[-1], num_classes, kernel_size=1, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)[-1]
        # GAP then the 1x1 classifier equals the classifier then GAP (both linear): pool first, it is cheaper.
        return self.classifier(F.adaptive_avg_pool2d(features, 1)).flatten(1)

    def training_losses(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cls": F.multilabel_soft_margin_loss(self(images), labels)}

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        return F.relu(self.classifier(self.backbone(images)[-1]))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        return list(self.backbone.parameters()), list(self.classifier.parameters())
