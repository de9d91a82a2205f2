"""What a two-view CAM method hands to an add-on loss (`train-cam --aux NAME`): its own loss terms and, for each
view, the class maps its pseudo labels would come from and the backbone features they were computed from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class ViewMaps:
    cams: torch.Tensor  # (N, C, h, w) class maps at feature resolution (any gradient is the add-on's to stop)
    features: torch.Tensor  # (N, D, h, w) the backbone's last features, with gradient


@dataclass
class TrainingViews:
    losses: dict[str, torch.Tensor]  # the method's own terms
    first: ViewMaps  # the training crop
    second: ViewMaps  # its transform A(crop)
    # Carries maps from the first view's frame onto the second's: align(maps, size of the second view's maps).
    align: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]
