"""What the affinity methods share: their backbone, padding, pseudo masks reduced to the affinity's stride, and
the affinity loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AffinityModelConfig
from ..models.backbone import create_backbone
from .pairs import pair_labels

# `--pretrained cam`: the backbone is built without weights and the stage loads the CAM classifier's into it.
FROM_CAM = "cam"


def create_affinity_backbone(config: AffinityModelConfig) -> nn.Module:
    pretrained = "none" if config.pretrained == FROM_CAM else config.pretrained
    return create_backbone(config.backbone, config.output_stride, pretrained, config.frozen_bn)


def stride_size(size: int, stride: int) -> int:
    """Cells of a map at `stride` over `size` pixels: ceil(size / stride), as IRN's strided size."""
    return (size - 1) // stride + 1


def padded(maps: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zeros at the bottom and right up to a multiple of `multiple` (normalized images: the mean colour)."""
    height, width = maps.shape[-2:]
    return F.pad(maps, (0, -width % multiple, 0, -height % multiple))


def reduce_labels(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pseudo masks (N, H, W) to the affinity map's size by nearest neighbour at pixel centres (IRN rescales its
    label maps with PIL's nearest filter)."""
    reduced = F.interpolate(masks[:, None].float(), size=tuple(size), mode="nearest-exact")
    return reduced[:, 0].long()


EPS = 1e-5  # official, in the logs of the loss and the means' denominators


def affinity_loss(affinity: torch.Tensor, labels: torch.Tensor, directions) -> dict[str, torch.Tensor]:
    """AffinityNet's and IRN's loss on pair affinities (N, D, h, w) against a label map (N, h, w): bg / 4 + fg / 4 +
    neg / 2, bg and fg the mean of -log(p + 1e-5) over background and same-foreground pairs, neg the mean of
    -log(1 + 1e-5 - p) over pairs of different classes (psa train_aff.py; irn train_irn.py's
    (bg / 2 + fg / 2) / 2 + neg / 2 is the same sum)."""
    background, foreground, different = pair_labels(labels, directions)
    attract, repel = -torch.log(affinity + EPS), -torch.log(1 + EPS - affinity)
    return {"bg": masked_mean(attract, background) / 4, "fg": masked_mean(attract, foreground) / 4,
            "neg": masked_mean(repel, different) / 2}


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Official: sum(mask * values) / (sum(mask) + 1e-5)."""
    return (values * mask).sum() / (mask.sum() + EPS)
