"""Baseline CAM (Zhou et al., CVPR 2016, as trained in IRN): backbone, 1x1 conv classifier without bias,
global average pooling, multilabel soft-margin loss. The CAM is the ReLU of the classifier applied per pixel.

For a two-view add-on loss (`train-cam --aux ppc`) the second view is the crop rescaled by `view_scale`; it only
feeds the add-on, the classification loss stays on the crop, so baseline and baseline + add-on differ by the
add-on's gradients (and by BatchNorm's running statistics, which also see the second view)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CamModelConfig
from ..core.errors import UserError
from ..models.backbone import create_backbone
from .common import rescale, rescale_to
from .views import TrainingViews, ViewMaps


class BaselineCam(nn.Module):
    @dataclass(frozen=True)
    class Options:
        """view_scale: the second view's size relative to the crop, for two-view add-ons (as SEAM's default)."""

        view_scale: float = 0.5

        def __post_init__(self):
            if not 0 < self.view_scale <= 4:
                raise UserError(f"baseline view scale must be in (0, 4], got {self.view_scale}")

    def __init__(self, config: CamModelConfig, num_classes: int, options: Options = Options()):
        super().__init__()
        self.options = options
        self.backbone = create_backbone(config.backbone, config.output_stride, config.pretrained, config.frozen_bn)
        self.classifier = nn.Conv2d(self.backbone.channels[-1], num_classes, kernel_size=1, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)[-1]
        # GAP then the 1x1 classifier equals the classifier then GAP (both linear): pool first, it is cheaper.
        return self.classifier(F.adaptive_avg_pool2d(features, 1)).flatten(1)

    def training_losses(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cls": F.multilabel_soft_margin_loss(self(images), labels)}

    def training_views(self, images: torch.Tensor, labels: torch.Tensor) -> TrainingViews:
        """The classification loss on the crop, and both views' ReLU'd class maps and last features."""
        first = self.backbone(images)[-1]
        second = self.backbone(rescale(images, self.options.view_scale))[-1]
        first_cams, second_cams = self.classifier(first), self.classifier(second)
        cls = F.multilabel_soft_margin_loss(first_cams.float().mean(dim=(-2, -1)), labels)
        return TrainingViews({"cls": cls}, ViewMaps(F.relu(first_cams), first), ViewMaps(F.relu(second_cams), second),
                             align=rescale_to)

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        return F.relu(self.classifier(self.backbone(images)[-1]))

    @property
    def normalization(self):
        return self.backbone.normalization

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        return list(self.backbone.parameters()), list(self.classifier.parameters())
