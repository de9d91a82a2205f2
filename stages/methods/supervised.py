"""Plain segmenter training on masks (`wsss segment --method deeplab`, the default): pixel cross-entropy against
pseudo masks or ground truth (255 ignored), plus an add-on loss on the decoder features when one is given
(`--contrast memory`: cross-image pixel contrast, pixel_contrast.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.io import IGNORE_INDEX
from ..models.deeplab import DeepLab


@dataclass(frozen=True)
class MaskTrainingOptions:
    """No options of its own: the segmenter's are the stage's."""


class MaskTraining(nn.Module):
    """`forward(batch, step)` → {"ce": ...} (+ the add-on's terms); batch has "image" and "mask"."""

    Options = MaskTrainingOptions
    uses_masks = True
    uses_saliency = False

    def __init__(self, segmenter: DeepLab, num_classes: int, options: MaskTrainingOptions, steps_per_epoch: int,
                 contrast: nn.Module | None = None):
        super().__init__()
        self.segmenter = segmenter
        self.contrast = contrast

    def new_parameters(self) -> list[nn.Parameter]:
        return list(self.contrast.parameters()) if self.contrast is not None else []

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        images, masks = batch["image"], batch["mask"]
        features = self.segmenter.features(images)
        logits = self.segmenter.classifier(features)
        full = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        terms = {"ce": F.cross_entropy(full, masks, ignore_index=IGNORE_INDEX)}
        if self.contrast is not None:
            terms.update(self.contrast(features, logits, masks, step))
        return terms
