"""Pictures of masks and maps on their images: what `report` shows and `predict --overlay` writes."""

from __future__ import annotations

import numpy as np

from .io import voc_palette

OVERLAY_ALPHA = 0.6
PALETTE = np.array(voc_palette(), dtype=np.float32).reshape(256, 3)  # a class index's RGB colour


def jet(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB floats in [0, 1], blue (low) through green to red (high)."""
    values = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # where red, green and blue peak
    return np.clip(1.5 - np.abs(4.0 * (values - centres)), 0.0, 1.0)


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """VOC colours blended onto the image; background pixels (0) show the image as it is."""
    colours = PALETTE[mask]
    blended = (1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * colours
    return np.where((mask != 0)[..., None], blended, image).astype(np.uint8)


def heat_overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """A heat map of values in [0, 1] blended onto the image."""
    return ((1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * 255 * jet(heat)).astype(np.uint8)
