"""DeepLabv3+-style segmenter (Chen et al., ECCV 2018): ResNet backbone, ASPP on the last stage, and a light
decoder that fuses stride-4 features for sharper boundaries."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SegModelConfig
from .backbone import create_backbone


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, one dilated 3x3 branch per rate, and image pooling."""

    def __init__(self, in_channels: int, channels: int, rates: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels)] + [conv_bn_relu(in_channels, channels, 3, rate) for rate in rates]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, channels))
        self.project = nn.Sequential(conv_bn_relu(channels * (len(rates) + 2), channels), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class DeepLab(nn.Module):
    def __init__(self, config: SegModelConfig, num_classes: int):
        """`num_classes` counts background: the output has one channel per class including background."""
        super().__init__()
        self.backbone = create_backbone(config.backbone, config.output_stride, config.pretrained, config.frozen_bn)
        self.aspp = ASPP(self.backbone.channels[-1], config.aspp_channels, config.aspp_rates)
        self.reduce_low_level = conv_bn_relu(self.backbone.channels[0], config.low_level_channels)
        self.decoder = nn.Sequential(
            conv_bn_relu(config.aspp_channels + config.low_level_channels, config.decoder_channels, 3),
            conv_bn_relu(config.decoder_channels, config.decoder_channels, 3),
        )
        self.classifier = nn.Conv2d(config.decoder_channels, num_classes, 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Decoder features at stride 4 (before the classifier): what an add-on head can project."""
        return self.decode(self.backbone(images))

    def decode(self, stages: list[torch.Tensor], apply=None) -> torch.Tensor:
        """Decoder features from the backbone's stage outputs. `apply(module, x)` runs each head module (default:
        `module(x)`); MCIC passes one that runs them with frozen weights."""
        apply = apply or (lambda module, x: module(x))
        low_level = apply(self.reduce_low_level, stages[0])
        context = F.interpolate(apply(self.aspp, stages[-1]), size=low_level.shape[-2:], mode="bilinear",
                                align_corners=False)
        return apply(self.decoder, torch.cat([context, low_level], dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.features(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @property
    def normalization(self):
        return self.backbone.normalization

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        backbone = list(self.backbone.parameters())
        backbone_ids = {id(p) for p in backbone}
        return backbone, [p for p in self.parameters() if id(p) not in backbone_ids]
