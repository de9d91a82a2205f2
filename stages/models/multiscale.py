"""Test-time augmentation shared by CAM inference and segmenter prediction: several scales, and flips; and the
CAM fusion of `infer-cam` and `predict` (IRN's make_cam: the sum over views, then each class divided by its max)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..core.device import autocast, forward_pixel_budget, memory_format


@torch.inference_mode()
def multi_scale_sum(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, scales, flip: bool,
                    device: torch.device, amp: bool,
                    per_view: Callable[[torch.Tensor], torch.Tensor] = lambda maps: maps,
                    stride: int = 1, channels: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over `scales` (and horizontal flips) of `per_view(forward(view))`, each resized to the input size.

    (N, 3, H, W) images → (N, K, H, W) float32. The views of one scale (the images, then their flips) go through
    the network in chunks of at most `forward_pixel_budget(device)` pixels; each flip is undone on the network's
    output, which is then upsampled to the input size rounded up to a multiple of `stride` and cropped to the input
    size: IRN's make_cam does so with the network's output stride (`strided_up_size`), so a map cell keeps its
    place whatever the image size; stride 1 resizes straight to the input size (the segmenter's full-size logits).
    `per_view` (e.g. softmax) acts on each view's resized output. `channels` ((N, K) indices into the network's
    output channels) keeps only those of each image before resizing: CAMs of the labelled classes, not of all 20
    (VOC) or 80 (COCO). An image's result does not depend on the batch it came in (up to the kernels' float
    rounding).
    """
    height, width = images.shape[-2:]
    padded = (-(-height // stride) * stride, -(-width // stride) * stride)
    count = images.shape[0]
    budget = forward_pixel_budget(device)
    total = None
    for scale in scales:
        scaled = images if scale == 1.0 else F.interpolate(
            images, size=(round(height * scale), round(width * scale)), mode="bilinear", align_corners=False)
        views = len(scaled) * (2 if flip else 1)  # the images, then their flips
        per_forward = views if budget is None else max(1, budget // (scaled.shape[-2] * scaled.shape[-1]))
        scale_sum = None
        for start in range(0, views, per_forward):
            end = min(start + per_forward, views)
            first_flip = max(start, count) - count  # the image whose flip is the chunk's first flipped view
            originals = scaled[start:min(end, count)]  # the chunk's unflipped views, then its flipped ones
            flipped = scaled[first_flip:max(end, count) - count].flip(-1)
            chunk = torch.cat([originals, flipped]) if len(flipped) else originals
            with autocast(device, amp):
                maps = forward(chunk.contiguous(memory_format=memory_format(device))).float()
            if len(flipped):
                maps = torch.cat([maps[:len(originals)], maps[len(originals):].flip(-1)])
            if channels is not None:
                kept = torch.cat([channels[start:start + len(originals)],
                                  channels[first_flip:first_flip + len(flipped)]])
                # Plain NCHW: the resize of a plane then does not depend on how many planes come with it.
                maps = maps[torch.arange(len(maps), device=maps.device)[:, None], kept.to(maps.device)].contiguous()
            maps = F.interpolate(maps, size=padded, mode="bilinear", align_corners=False)[..., :height, :width]
            maps = per_view(maps)
            if start == 0 and end == views:  # the whole scale in one forward (small images): no zeros to add to
                scale_sum = maps[:count] + maps[count:] if flip else maps
                continue
            if scale_sum is None:
                scale_sum = torch.zeros(count, *maps.shape[1:], device=maps.device)
            scale_sum[start:start + len(originals)] += maps[:len(originals)]
            scale_sum[first_flip:first_flip + len(flipped)] += maps[len(originals):]
        if total is None:
            total = scale_sum
        else:
            total += scale_sum
    return total


def fused_cams(cam_function, images: torch.Tensor, scales, flip: bool, device: torch.device,
               amp: bool = True, output_stride: int = 1, classes: list[np.ndarray] | None = None) -> torch.Tensor:
    """(N, 3, H, W) normalised images → (N, C, H, W) CAMs summed over scales (and flips), not yet normalised, on
    the device; `output_stride`: the network's (see `multi_scale_sum`). Given each image's foreground classes
    (indices 1..C), only their maps are resized and summed: (N, K, H, W), K the most classes of an image, image
    i's K_i maps first (`labelled_cams` takes them)."""
    if classes is None:
        return multi_scale_sum(cam_function, images, scales, flip, device, amp, stride=output_stride)
    most = max(len(image_classes) for image_classes in classes)
    if most == 0:
        return torch.zeros(len(images), 0, *images.shape[-2:], device=images.device)
    channels = torch.tensor([list(image_classes - 1) + [image_classes[-1] - 1 if len(image_classes) else 0]
                             * (most - len(image_classes)) for image_classes in classes], dtype=torch.long)
    return multi_scale_sum(cam_function, images, scales, flip, device, amp, stride=output_stride, channels=channels)


def labelled_cams(cams: torch.Tensor, classes: list[np.ndarray]) -> list[torch.Tensor]:
    """`fused_cams(..., classes=classes)` → per image the (K, H, W) float16 maps of its K classes as the CAM file
    stores them: ReLU, then each map divided by its maximum (IRN: + 1e-5 so an all-zero map stays zero). One
    batched op on the CAMs' device for the whole batch, so only the labelled maps, in half precision, leave it."""
    counts = [len(image_classes) for image_classes in classes]
    images = torch.repeat_interleave(torch.arange(len(classes)), torch.tensor(counts, dtype=torch.long))
    slots = torch.cat([torch.arange(count) for count in counts])
    selected = cams[images.to(cams.device), slots.to(cams.device)].clamp_min(0)
    selected = selected / (selected.amax(dim=(1, 2), keepdim=True) + 1e-5)
    return list(selected.half().split(counts))
