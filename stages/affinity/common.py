"""What the affinity methods share: their backbone, padding, and pseudo masks reduced to the affinity's stride."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AffinityModelConfig
from ..models.backbone import create_backbone

# `--pretrained cam`: the backbone is built without weights and the stage loads the CAM classifier's into it.
FROM_CAM = "cam"


def create_affinity_backbone(config: AffinityModelConfig) -> nn.Module:
    pretrained = "none" if config.pretrained == FROM_CAM else config.pretrained
    return create_backbone(config.backbone, config.output_stride, pretrained)


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
