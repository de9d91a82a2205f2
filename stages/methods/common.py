"""Tensor helpers several methods share: bilinear rescaling (SEAM's transform, the baseline's second view),
SEAM's per-map min-max normalisation, and carrying maps through a pixel affinity (SEAM's PCM, and the PCM
pseudo-label refinement in `stages/refine/pcm.py`). No parameters, no state."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear rescale by `scale` (floored, at least 1 px; align_corners=True as SEAM's transform)."""
    size = (max(1, int(images.shape[-2] * scale)), max(1, int(images.shape[-1] * scale)))
    return rescale_to(images, size)


def rescale_to(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=True)


def max_norm(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per image and channel: ReLU, then (x - min - eps)^+ / (max - min + eps) (official tool/visualization.py)."""
    cams = F.relu(cams)
    low = cams.amin(dim=(-2, -1), keepdim=True)
    high = cams.amax(dim=(-2, -1), keepdim=True)
    return F.relu(cams - low - eps) / (high - low + eps)


def apply_affinity(cam: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) maps, (N, hw, hw) affinity → (N, K, h, w): refined[:, :, j] = sum_i affinity[j, i] cam[:, :, i].

    Any channel count K: C+1 (background first) during training, or a pseudo-label score stack.
    """
    n, k, h, w = cam.shape
    if affinity.shape != (n, h * w, h * w):
        raise ValueError(f"affinity {tuple(affinity.shape)} does not fit maps {tuple(cam.shape)}")
    with torch.autocast(cam.device.type, enabled=False):
        return torch.bmm(cam.float().flatten(2), affinity.float().transpose(1, 2)).view(n, k, h, w)


__all__ = ["apply_affinity", "max_norm", "rescale", "rescale_to"]
