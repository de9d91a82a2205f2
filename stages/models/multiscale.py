"""Test-time augmentation shared by CAM inference and segmenter prediction: several scales, and flips."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..core.device import autocast, memory_format


@torch.inference_mode()
def multi_scale_sum(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, scales, flip: bool,
                    device: torch.device, amp: bool,
                    per_view: Callable[[torch.Tensor], torch.Tensor] = lambda maps: maps) -> torch.Tensor:
    """Sum over `scales` (and horizontal flips) of `per_view(forward(view))`, each resized to the input size.

    (N, 3, H, W) images → (N, K, H, W) float32. An image and its flip go through the network as one batch and
    the flip is undone before summing; `per_view` (e.g. softmax) acts on each view's resized output.
    """
    height, width = images.shape[-2:]
    count = images.shape[0]
    total = None
    for scale in scales:
        scaled = images if scale == 1.0 else F.interpolate(
            images, size=(round(height * scale), round(width * scale)), mode="bilinear", align_corners=False)
        batch = torch.cat([scaled, scaled.flip(-1)]) if flip else scaled
        with autocast(device, amp):
            maps = forward(batch.contiguous(memory_format=memory_format(device))).float()
        maps = per_view(F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False))
        if flip:
            maps = maps[:count] + maps[count:].flip(-1)
        total = maps if total is None else total + maps
    return total
